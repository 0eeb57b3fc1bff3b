"""The node's web page and HTTP API (issue 15): Starlette on Hypercorn's trio worker.

Layout, one job per module:

* :mod:`daemon.web.auth` — the login token (0600 in the home), signed session cookies, CSRF tokens;
* :mod:`daemon.web.recordings` — uploaded recordings on disk and their caption jobs (a service
  that the API and the pages both call);
* :mod:`daemon.web.upload` — streaming a multipart upload to disk under a size limit, then
  checking it with PyAV;
* :mod:`daemon.web.captions` — a finished job's tracks as VTT, SRT or JSON with word times;
* :mod:`daemon.web.call_feed` — live call captions fanned out to server-sent-event clients;
* :mod:`daemon.web.node_view` — status, peers, rounds and trust for the API and the Node page;
* :mod:`daemon.web.api`, :mod:`daemon.web.pages` — thin HTTP handlers; :mod:`daemon.web.openapi`
  — the API's description; :mod:`daemon.web.app` — wiring; :mod:`daemon.web.server` — serving it
  inside ``parley node``.
"""
