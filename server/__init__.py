"""The team server room: ``trackside server``, a gRPC service in front of one store that daemons
and ``trackside sync`` upload runs to (through the daemon's sink, ``trackside.daemon.sink``)
and that ``trackside.Api("grpc://...")`` reads from (through the SDK's reading API). It sits on
top of the daemon and the SDK and imports both; neither imports it."""
