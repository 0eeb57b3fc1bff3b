"""Personalized FedAvg of the CSM as a Flower app (Message API), one file per job.

:mod:`~fl.flower.settings` (the client plan, the run config, the errors),
:mod:`~fl.flower.records` (messages and states), :mod:`~fl.flower.data` (client features),
:mod:`~fl.flower.client` (the ClientApp), :mod:`~fl.flower.strategy` (the server's Strategy),
:mod:`~fl.flower.results` (round reports and the run summary) and :mod:`~fl.flower.server`
(the ServerApp). ``flwr run`` loads the app objects of :mod:`simulations.flower_app`, which gives
its clients the lab's synthetic data as well (:mod:`simulations.flower_synthetic`).

Theory of operation
-------------------
A parley node runs a whole personalized-FedAvg round by itself: it averages its own and its
peers' weights and mixes the average into its own model (:func:`fl.aggregate.aggregate_round`).
With Flower a server sits in the middle, so the same round is split in two halves, each calling
the shared code, never a copy of it:

* **Server** (:class:`PersonalizedFedAvg.aggregate_train`): the clients' replies become
  :class:`~fl.aggregate.PeerUpdate` s and the global model is
  ``aggregate_round(reference, clients, aggregation).global_state``, where ``reference`` is the
  previous global model under the peer id ``"server"`` with ``sample_count=1``
  (:data:`REFERENCE_SAMPLE_COUNT`). So the server gets everything a node gets: validation
  (architecture, names, shapes, finite values, positive counts, duplicate ids; a bad reply is
  recorded and left out), clipping of every client's update to ``clip_norm_ratio *
  ||previous global||``, the sample-weighted mean or, from ``min_bundles_for_robust`` client
  bundles (the server adds one to the threshold, since the reference is not a client), the
  robust statistic, and the bound ``||new global - previous global|| <= clip_norm_ratio *
  ||previous global||``. The reference is one participant: with weight one frame against the
  clients' thousands it moves the weighted mean by under 1/(1 + total frames) of the way back,
  and in the robust statistics it is one point among K + 1. ``personal_state`` is not used on
  the server, which has no data of its own. One guarantee differs from a node's: a node bounds
  ``||personal - local||`` by clipping around its *own* model; here clipping is around the
  previous global model, so what bounds a client's step is the server's bound on the global.
* **Client, train** (:func:`train_client`): ``personal = fl.personalize.personalize(local,
  global, alpha)``, where ``local`` is the model this client trained last round, kept in
  ``context.state`` (an ArrayRecord under :data:`LOCAL_MODEL_KEY`); in the first round the
  client starts from the initial global model (the seeded init every node shares). It trains
  ``personal`` on its own features (:func:`fl.train.train_codec`), keeps the result as its new
  ``local`` and sends it. ``personalize`` is the formula of ``aggregate_round``'s last step, so a
  node and a Flower client holding the same ``local`` and ``global`` form the same model.
* **Client, evaluate** (:func:`evaluate_client`): held-out log-mel L1 (:func:`fl.train.evaluate_l1`)
  of three models on the client's own held-out features: *local-only* (a second model the client
  trains with the same steps and seeds but never mixes, the baseline), *global* (the model the
  server just computed) and *personal* (``personalize(local, global, alpha)``).

Every message carries the whole client plan (codec shape, training settings, alpha, where the
data comes from) as JSON in its ConfigRecord, so a client needs no configuration of its own
beyond its ``partition-id`` (``node_config``). Nothing here does work at import time: Ray
re-imports this module in every worker.

Client data (:func:`fl.flower.data.load_client_data`) is one speaker per client, so clients
are non-IID:

* ``"synthetic"`` (the lab's app only): :func:`simulations.flower_synthetic.synthetic_client_data`,
  a deterministic generator of log-mel-like features (formant bumps that drift, harmonic
  ripple, spectral tilt, syllable-rate energy, noise, clamped like Whisper's front end),
  with per-client parameters drawn from ``(seed, partition-id)``. It is not speech: it exists
  so hundreds of clients cost nothing to set up.
* ``"prepared"``: log-mel features of the synthesized multi-speaker corpus, written by
  :func:`simulations.flower_sim.prepare_corpus_features` (or any directory of the same layout,
  which a SuperNode can name with ``--node-config 'data-dir="..."'``). Client ``p`` reads speaker
  ``p mod S``; clients beyond the ``S`` speakers reuse a speaker through
  :func:`speaker_variant` (a pitch-like shift of the mel axis and a spectral tilt).
"""

from __future__ import annotations

import common.offline  # noqa: F401  (before flwr: no telemetry, no update check)
