"""The bottom room: what the SDK, the daemon, the store and the server all agree on, and import
from here alone. The wire protocol between writers and the daemon (``protocol``), how a writer
finds the host's daemon (``discovery``), the rules for names that become paths (``names``), the
errors callers catch (``errors``), the shared vocabularies (``constants``) and how trackside
writes its files (``private``). Nothing here imports another room of trackside but the codec.
"""
