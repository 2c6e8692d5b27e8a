"""The relay's foundations: configuration, errors, logs, times, the database engine, the
spool, OpenPGP, plain addresses, the text normaliser and copy references.

Owns: everything the other packages build on that knows nothing of the list's rules.
May import: the standard library and third-party packages only; no other package of relay.
"""
