"""The Flower app objects ``flwr run`` loads (simulations/flower_project): parley's
personalized FedAvg (:mod:`fl.flower`) with clients that also take the lab's synthetic data.

:func:`train_client` and :func:`evaluate_client` are the ClientApp's two handlers with that
loader bound, for tests and in-process runs that drive a client by hand.
"""

from __future__ import annotations

import common.offline  # noqa: F401  (before flwr: no telemetry, no update check)

from flwr.app import Context, Message

from fl.flower import client
from fl.flower.server import make_server_app
from simulations.flower_synthetic import load_any_client_data


def train_client(message: Message, context: Context) -> Message:
    return client.train_client(message, context, load_any_client_data)


def evaluate_client(message: Message, context: Context) -> Message:
    return client.evaluate_client(message, context, load_any_client_data)


client_app = client.make_client_app(load_any_client_data)
#: Settings come from the run config (``[tool.flwr.app.config]`` + ``--run-config``).
server_app = make_server_app()
