"""The read API for IT systems: records through the access guard, over HTTP.

- :mod:`~engine.api.tokens`: bearer tokens, kept as salted scrypt hashes beside the
  principals file;
- :mod:`~engine.api.auth`: who calls: a token or a TLS client certificate, mapped to a
  principal of the principals file as it is now;
- :mod:`~engine.api.params`: what a request may ask, bounded;
- :mod:`~engine.api.service`: each request one guard decision, recorded before anything is
  read; the records, summaries and proofs it answers with (:mod:`~engine.api.summary`,
  :mod:`~engine.api.proof`);
- :mod:`~engine.api.app`, :mod:`~engine.api.models`, :mod:`~engine.api.server`: FastAPI
  and uvicorn (the ``server`` extra), imported only by ``converge serve``.

See docs/access.md.
"""
