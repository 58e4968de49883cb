"""Stage central: many site collectors, one broker, ingesters into one central store.

The path a user takes past one machine (docs/scale-out.md), one module each:

- :mod:`~engine.central.publisher`: a site collector's side. It sends what
  its run sealed (the outbox of its :class:`~engine.store.site.SiteStore`),
  plans and key versions first, through a transport
  (:mod:`engine.transport`), and takes a batch out of the outbox only when the
  centre answers that it committed it; it has its log's checkpoints cosigned.
- :mod:`~engine.central.ingester`: the centre's side. Any number of
  ingesters share the sites' messages; each verifies a batch
  (:mod:`~engine.central.checks`) against the site's keys
  (:mod:`~engine.central.trust`), stores it idempotently in the
  :class:`~engine.store.central.CentralStore` with its entry of the central
  log, commits, then answers and acknowledges. What fails is quarantined.
- :mod:`~engine.central.witness`: the centre as the witness of every site
  log: a checkpoint consistent with the last one it saw is cosigned (C2SP
  tlog-cosignature), a rollback or a fork is refused and named.
"""
