"""Reading a message's content: every part, whatever it claims to be; what cannot be read is
reported, and archive bombs cost no more than the limits."""

from __future__ import annotations

import base64
import gzip
import io
import random
import tarfile
import tracemalloc
import zipfile

import pytest

from relay.leaks import archives, content
from relay.leaks.archives import MAX_DEPTH, MAX_MEMBERS
from relay.leaks.content import read_content
from relay.leaks.index import text_of
from relay.leaks.markup import html_text

SECRET = "The kubelet clones the repository and runs its hooks as root on the node."


def message(*parts: bytes) -> bytes:
    """A multipart/mixed message of these parts (each its headers, a blank line, a body)."""
    body = b"".join(b"--b\r\n" + part + b"\r\n" for part in parts)
    return (
        b"From: a@example.org\r\nSubject: notes\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + body + b"--b--\r\n"
    )


def part(ctype: str, data: bytes, *, name: str | None = None, extra: str = "") -> bytes:
    headers = f"Content-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n{extra}"
    if name:
        headers += f'Content-Disposition: attachment; filename="{name}"\r\n'
    return headers.encode() + b"\r\n" + base64.encodebytes(data).replace(b"\n", b"\r\n")


def zipped(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def test_a_plain_message_is_its_body() -> None:
    found = read_content(message(b"Content-Type: text/plain\r\n\r\n" + SECRET.encode()))

    assert found.body == SECRET
    assert (found.attachments, found.unreadable) == ((), ())
    assert text_of(message(b"Content-Type: text/plain\r\n\r\n" + SECRET.encode())) == SECRET


def test_html_shows_its_text_and_keeps_what_it_hides() -> None:
    markup = (
        "<html><head><style>.x{}</style></head><body><p>The&nbsp;em<span style='display:none'>"
        "qz</span><b></b>bargo &amp; the fix</p><!-- hidden note --><div hidden>in a hidden"
        " div</div><script>var leak = 'in a script';</script><img alt='in an alt text'>"
        "</body></html>"
    )
    text = html_text(markup)

    assert "The\u00a0embargo & the fix" in text  # what a reader sees, in one piece
    for kept in ("qz", "hidden note", "in a hidden div", "in a script", "in an alt text"):
        assert text.index(kept) > text.index("the fix")  # after it, apart


@pytest.mark.parametrize(
    ("label", "data"),
    [
        ("x-no-such-charset", SECRET.replace("root", "röot").encode("utf-8")),
        ("iso-8859-1", SECRET.replace("root", "röot").encode("utf-8")),  # wrong label
        ("us-ascii", SECRET.replace("root", "röot").encode("latin-1")),  # wrong label, 8-bit
        ("utf-16", SECRET.replace("root", "röot").encode("utf-16")),
    ],
)
def test_a_missing_unknown_or_wrong_charset_is_decoded_anyway(label: str, data: bytes) -> None:
    found = read_content(message(part(f'text/plain; charset="{label}"', data)))

    assert found.body == SECRET.replace("root", "röot")
    assert found.unreadable == ()


@pytest.mark.parametrize(
    "data",
    [
        SECRET.encode(),
        SECRET.encode("utf-16"),
        SECRET.encode("utf-16-le"),  # no byte order mark
        b"\xef\xbb\xbf" + SECRET.encode(),
    ],
)
def test_text_sent_as_octet_stream_is_read(data: bytes) -> None:
    found = read_content(message(part("application/octet-stream", data, name="notes.dat")))

    assert found.attachments == (("notes.dat", SECRET),)
    assert found.unreadable == ()


def test_archives_are_opened_member_by_member() -> None:
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w:gz") as archive:
        info = tarfile.TarInfo("docs/leak.txt")
        info.size = len(SECRET)
        archive.addfile(info, io.BytesIO(SECRET.encode()))
    found = read_content(
        message(
            part("application/gzip", gzip.compress(SECRET.encode()), name="notes.txt.gz"),
            part("application/zip", zipped({"a/notes.md": SECRET.encode()}), name="n.zip"),
            part("application/octet-stream", tar.getvalue(), name="n.tgz"),
        )
    )

    assert found.attachments == (
        ("notes.txt", SECRET),
        ("n.zip/a/notes.md", SECRET),
        ("n.tar/docs/leak.txt", SECRET),
    )
    assert found.unreadable == ()


def test_an_attached_message_is_read_with_its_subject() -> None:
    inner = b"Subject: Fwd: the gitRepo issue\r\nContent-Type: text/plain\r\n\r\n" + SECRET.encode()
    found = read_content(message(b"Content-Type: message/rfc822\r\n\r\n" + inner))

    assert found.body == f"Subject: Fwd: the gitRepo issue\n{SECRET}"


def test_signatures_keys_and_images_are_skipped_not_unreadable() -> None:
    signature = b"-----BEGIN PGP SIGNATURE-----\r\n\r\niQIz\r\n-----END PGP SIGNATURE-----\r\n"
    key = b"-----BEGIN PGP PUBLIC KEY BLOCK-----\r\n\r\nmQIN\r\n-----END PGP PUBLIC KEY BLOCK-----"
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + random.Random(1).randbytes(1024)
    found = read_content(
        message(
            b"Content-Type: text/plain\r\n\r\nhello",
            b"Content-Type: application/pgp-signature\r\n\r\n" + signature,
            part("application/pgp-keys", key, name="colleague.asc"),
            part("image/png", png, name="logo.png"),
        )
    )

    assert found.unreadable == ()
    assert found.skipped == (
        "(application/pgp-signature part): OpenPGP signature",
        "colleague.asc: OpenPGP public key",
        "logo.png: image",
    )
    assert found.text == "hello"


def test_what_a_signature_image_or_key_label_hides_is_still_read() -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + random.Random(1).randbytes(1024)
    found = read_content(
        message(
            part("application/pgp-signature", SECRET.encode(), name="signature.asc"),
            part("image/png", SECRET.encode(), name="a.png"),
            part("image/png", png + b"\n" + SECRET.encode(), name="b.png"),  # appended text
        )
    )

    assert [name for name, text in found.attachments if SECRET in text] == [
        "signature.asc",
        "a.png",
        "b.png",
    ]


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        (
            [
                b"Content-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n",
                b"Content-Type: application/octet-stream\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n"
                b"\r\nhQIMA\r\n-----END PGP MESSAGE-----\r\n",
            ],
            "encrypted (application/pgp-encrypted)",
        ),
        (
            [part("application/pkcs7-mime; smime-type=enveloped-data", b"\x30\x80\x06\x09")],
            "encrypted (application/pkcs7-mime)",
        ),
        ([part("application/pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", name="a.pdf")], "PDF"),
        ([part("application/octet-stream", bytes(range(256)) * 8, name="x.bin")], "binary"),
        ([part("application/octet-stream", b"\x85\x02\x0c\x03" + bytes(300))], "OpenPGP"),
    ],
)
def test_encrypted_and_unknown_binary_content_is_unreadable(
    parts: list[bytes], reason: str
) -> None:
    found = read_content(message(*parts))

    assert found.unreadable
    assert reason in found.unreadable[0]


def test_an_encrypted_zip_member_is_unreadable() -> None:
    data = bytearray(zipped({"secret.txt": SECRET.encode()}))
    # Set the "encrypted" flag (bit 0) in the local header and the central directory.
    data[6] |= 1
    central = data.index(b"PK\x01\x02")
    data[central + 8] |= 1
    found = read_content(message(part("application/zip", bytes(data), name="s.zip")))

    assert found.unreadable == ("s.zip/secret.txt: encrypted zip member",)
    assert found.attachments == ()


def peak_memory(payload: bytes) -> tuple[content.Content, int]:
    read_content.cache_clear()
    tracemalloc.start()
    try:
        found = read_content(payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return found, peak


def test_a_gzip_bomb_is_unreadable_and_expands_no_further_than_its_limit() -> None:
    bomb = gzip.compress(bytes(64 * 1024 * 1024), compresslevel=9)  # 64 MiB in about 64 KB

    found, peak = peak_memory(message(part("application/gzip", bomb, name="logs.gz")))

    assert found.unreadable == ("logs.gz: expands more than 100 times (a compression bomb?)",)
    assert peak < 24 * 1024 * 1024  # what it read (at most 100 x 64 KB) and the message


def test_a_zip_bomb_is_unreadable_member_by_member() -> None:
    bomb = zipped({f"{n}.txt": bytes(16 * 1024 * 1024) for n in range(4)})  # 64 MiB in 64 KB

    found, peak = peak_memory(message(part("application/zip", bomb, name="z.zip")))

    assert len(found.unreadable) == 4
    assert all("expands more than 100 times" in reason for reason in found.unreadable)
    assert peak < 24 * 1024 * 1024


def test_the_budget_of_expanded_bytes_is_per_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "MAX_EXPANDED", 4 * len(SECRET))
    archive = zipped({f"{n}.txt": SECRET.encode() for n in range(6)}, zipfile.ZIP_STORED)

    found = read_content(message(part("application/zip", archive, name="z.zip")))

    assert len(found.attachments) == 4
    assert found.unreadable[0].startswith("z.zip/4.txt: over the limit")


def test_nesting_deeper_than_the_limit_is_unreadable() -> None:
    data = SECRET.encode()
    for _ in range(MAX_DEPTH + 2):
        data = zipped({"inner.zip": data})

    found = read_content(message(part("application/zip", data, name="deep.zip")))

    assert found.attachments == ()
    assert len(found.unreadable) == 1
    assert f"nested more than {MAX_DEPTH} containers deep" in found.unreadable[0]


def test_an_archive_of_too_many_members_is_unreadable() -> None:
    archive = zipped({f"{n}.txt": b"" for n in range(MAX_MEMBERS + 1)}, zipfile.ZIP_STORED)

    found = read_content(message(part("application/zip", archive, name="many.zip")))

    assert found.unreadable == (f"many.zip: zip archive of more than {MAX_MEMBERS} members",)
