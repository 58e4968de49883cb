"""Copy an audit bundle with one byte of one member changed (make demo, step 16).

    python examples/flip_byte.py BUNDLE.zip CHANGED.zip MEMBER

The first digit of the first value in MEMBER is changed; everything else,
the manifest and its signature included, is copied as it is.
"""

from __future__ import annotations

import sys
import zipfile


def main(source: str, target: str, member: str) -> None:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == member:
                at = data.index(b'"value":') + len(b'"value":')
                digit = b"1" if data[at : at + 1] != b"1" else b"2"
                data = data[:at] + digit + data[at + 1 :]
                print(f"changed byte {at} of {member}: {data[at - 8 : at + 6].decode()}")
            dst.writestr(info, data)


if __name__ == "__main__":
    main(*sys.argv[1:4])
