"""The operator's console: pages for the committee on call and the HTTP API (/api/v1).

Every action goes through the same use-cases as the CLI (`relay.app`), audited as
`web:<admin>`; this package only reads requests, checks who sends them and renders results.

May import: `relay.core`, `relay.model`, `relay.policy`, `relay.store`, `relay.leaks`,
`relay.app`, `relay.outbound`, `relay.inbound`.
"""
