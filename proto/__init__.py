"""Generated protocol modules (see ``proto/generate.py``). Importing this package is cheap;
the generated modules import protobuf/grpc only when imported themselves."""
