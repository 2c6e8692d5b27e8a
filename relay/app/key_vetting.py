"""Keys offered for a member or a sender: vetted before anything changes, imported, then
checked again as merged with what the keyring already held.

A member's key must encrypt (not expired, revoked, RSA < 2048 or sign-only); a sender's
must only sign. A file with one unfit key is refused whole, so a refused change leaves
the keyring and the database as they were.
"""

from __future__ import annotations

from relay.core.crypto import MIN_RSA_BITS, Crypto, KeyInfo
from relay.core.errors import KeyProblem


def vet_keys(crypto: Crypto, data: bytes, *, need_encryption: bool) -> list[KeyInfo]:
    """The keys in `data` if every one of them is fit to use; refuse the whole file otherwise."""
    found = crypto.inspect_keys(data)
    if not found:
        raise KeyProblem("no OpenPGP public key found in the key file")
    if any(k.secret for k in found):
        raise KeyProblem("the key file holds a secret key; give the public key only")
    problems = [f"{k.fingerprint}: {p}" for k in found if (p := key_problem(k, need_encryption))]
    if problems:
        raise KeyProblem("key refused, nothing changed: " + "; ".join(problems))
    own = {k.fingerprint for k in crypto.list_keys() if k.secret}
    if own & {k.fingerprint for k in found}:
        raise KeyProblem("that is the list's own key")
    return found


def key_problem(key: KeyInfo, need_encryption: bool) -> str | None:
    """Why the key cannot be used, or None."""
    if key.revoked:
        return "key is revoked"
    if key.expired:
        return "key has expired"
    if key.algorithm == "RSA" and key.bits < MIN_RSA_BITS:
        return f"RSA key of {key.bits} bits is too weak (at least {MIN_RSA_BITS} required)"
    if need_encryption:
        return key.problem
    return None


def import_vetted(
    crypto: Crypto, data: bytes, found: list[KeyInfo], *, need_encryption: bool
) -> list[str]:
    """Import vetted keys, then re-check them as merged with what the keyring already held."""
    fingerprints = crypto.import_keys(data)
    problems = []
    for fpr in fingerprints:
        merged = crypto.key_info(fpr)
        problem = "missing after import" if merged is None else key_problem(merged, need_encryption)
        if problem:
            problems.append(f"{fpr}: {problem}")
    if problems:
        # The file was fine but the keyring's copy (say, already revoked) is not.
        raise KeyProblem(
            "key refused as merged with the relay's keyring; no member or sender changed: "
            + "; ".join(problems)
        )
    return fingerprints or [k.fingerprint for k in found]


def key_status(key: KeyInfo) -> str:
    """One word for a key's state, as the listings show it."""
    if key.revoked:
        return "revoked"
    if key.expired:
        return "expired"
    if key.algorithm == "RSA" and key.bits < MIN_RSA_BITS:
        return "weak"
    if not key.can_encrypt:
        return "sign-only"
    return "usable"
