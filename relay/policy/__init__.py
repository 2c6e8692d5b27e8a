"""Pure decisions from the list's policy files (`policies/*.toml`): who may receive what
(forwarding), when a lift may fall (timing), where a member's post goes (posting).

Owns: reading the policy files and deciding; no database, no I/O beyond reading them.
May import: `relay.core`.
"""
