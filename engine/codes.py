"""Every finding code the engine emits, with the one-line meaning docs and SARIF show.

Codes are stable: tools and CI filters depend on them. ``docs/findings.md``
documents each one, and a test fails when a code is emitted but not listed
here or listed here but undocumented. Protocol plugins document their own
codes in their README.
"""

from __future__ import annotations

CODES: dict[str, str] = {
    # load
    "file-unreadable": "a file could not be read",
    "path-not-found": "a path given on the command line does not exist",
    "yaml-too-large": "a YAML file is larger than the bound accepted",
    "yaml-not-utf8": "a file is not valid UTF-8",
    "yaml-tab-indent": "a tab character is used for indentation",
    "yaml-syntax": "the file is not well-formed YAML",
    "yaml-duplicate-key": "a mapping defines the same key twice",
    "yaml-non-scalar-key": "a mapping key is a list or a mapping",
    "yaml-alias-bomb": "aliases expand beyond the bound (billion laughs)",
    "yaml-too-deep": "nesting is deeper than the loader accepts",
    "yaml-bad-value": "a scalar cannot be read (unknown tag, bad timestamp)",
    "yaml-bad-merge": "a '<<' merge key does not name a mapping",
    "yaml-number-too-large": "an integer beyond ±(2**53 - 1), which canonical JSON cannot carry",
    "yaml-too-long": "a list, mapping or string longer than the bound accepted",
    # validate
    "unknown-key": "a key that the file kind does not define (a typo, usually)",
    "missing-key": "a required key is missing",
    "wrong-type": "a value has the wrong type",
    "bad-value": "a value is outside what is allowed (not one of the choices, out of range)",
    "duration-invalid": "a duration is not an integer followed by ms, s, m, h, d, w or y",
    "cron-invalid": "a cron expression does not parse",
    "timezone-unknown": "a time zone is not an IANA time zone name",
    "id-invalid": "an id does not have the required form (kebab-case, file-safe)",
    "glob-invalid": "a glob pattern is malformed",
    "protocol-unknown": "no installed plugin implements the device's protocol",
    "endpoint-invalid": "a protocol plugin's endpoint schema is unusable (a plugin bug)",
    "address-invalid": "a point address fails its protocol plugin's checks",
    "policy-duplicate-id": "two policies have the same id",
    "site-duplicate-id": "two site files have the same site id",
    "device-duplicate-id": "two devices of one site have the same id",
    "point-duplicate-name": "two points of one device have the same name",
    "principal-duplicate-id": "a principals file lists the same principal twice",
    "exception-missing-reason": "an exception has no reason",
    "exception-missing-approver": "an exception has no approved_by",
    "exception-missing-expiry": "an exception has no expires date",
    # references, select, merge, plan
    "role-unheld": "a role named in a policy is held by no principal",
    "signing-key-unknown": "signing.keys names a key the given key store does not hold",
    "selector-matches-nothing": "a selector value matches no device or point",
    "policy-governs-nothing": "a policy governs no point of the compiled sites",
    "exception-expired": "an exception is past its expiry and no longer applies",
    "exception-waives-nothing": "an exception in force matches nothing its policy governs",
    "retention-conflict": "keep_at_least exceeds keep_at_most (in one policy or once merged)",
    "interval-below-limit": "a capture interval is shorter than the device's min_interval",
    "request-rate-exceeded": "read groups need more requests/s than the device allows",
    "point-not-captured": "a governed point has no capture demand and will not be collected",
    "device-id-clash": "two compiled sites have a device with the same id",
}
