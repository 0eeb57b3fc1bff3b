"""The Flower ClientApp: a client's training and evaluation rounds (personalization included)."""

from __future__ import annotations

import common.offline  # noqa: F401  (before flwr: no telemetry, no update check)

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from typing import Final

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from codec.config import CodecConfig
from codec.model import CodecModel, load_numpy_state, new_model, state_to_numpy
from fl.config import TrainConfig
from fl.flower.data import ClientData, ClientDataLoader, load_client_data
from fl.flower.records import (
    ARRAYS_KEY,
    META_KEY,
    METRICS_KEY,
    MetricValue,
    State,
    arrays_to_state,
    checked_state,
    partition_id_of,
    plan_of,
    record,
    server_round_of,
    state_to_arrays,
)
from fl.flower.settings import ClientPlan, FlowerAppError
from fl.personalize import DITTO_LAMBDA, Method, training_start
from fl.train import evaluate_l1, train_codec

#: Keys of the client's own state (``context.state``), which persists across rounds.
LOCAL_MODEL_KEY: Final = "local-model"
LOCAL_ONLY_MODEL_KEY: Final = "local-only-model"
#: Ditto's personal model (``personalization = "ditto"``), trained beside the federated one.
DITTO_MODEL_KEY: Final = "ditto-model"


def _stored_state(context: Context, key: str, codec: CodecConfig) -> State | None:
    if key not in context.state:
        return None
    record = context.state[key]
    if not isinstance(record, ArrayRecord):
        raise FlowerAppError(f"client state {key!r} is not an ArrayRecord")
    return checked_state(arrays_to_state(record), codec, f"client state {key!r}")


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    # Evaluation runs outside train_codec (which sets its own): tiny convolutions on a busy
    # machine are several times slower with more than one intra-op thread.
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@functools.lru_cache(maxsize=4)
def _reusable_model(codec: CodecConfig) -> CodecModel:
    # Building a CodecModel (seeded init of every tensor) costs more than a few training steps
    # of the small codecs used for hundreds of clients, and every use here loads a full state
    # over it anyway. A ClientApp handles one message at a time (one Ray actor task, or one
    # clientapp process), so one model per process and codec is never used twice at once.
    return new_model(codec)


def _model_with(codec: CodecConfig, state: State) -> CodecModel:
    model = _reusable_model(codec)
    load_numpy_state(model, state)
    model.eval()
    return model


def _train(codec: CodecConfig, start: State, data: ClientData, config: TrainConfig) -> State:
    model = _model_with(codec, start)
    train_codec(model, data.train, config)
    return state_to_numpy(model)


def client_train_config(plan: ClientPlan, round_number: int, partition_id: int) -> TrainConfig:
    """The plan's training settings with this client's seed for this round.

    A different stream per round and per client, the same for a client's two tracks (as in
    :mod:`simulations.codec_eval`), so personal and local-only differ only by the aggregation.
    """
    seed = (plan.train.seed + 1_000_003 * round_number + 7_919 * partition_id) % 2**63
    return dataclasses.replace(plan.train, seed=seed)


def train_client(
    message: Message, context: Context, load_data: ClientDataLoader = load_client_data
) -> Message:
    """One client's training round (module docstring: "Client, train")."""
    plan = plan_of(message)
    partition_id = partition_id_of(context)
    round_number = server_round_of(message)
    arrays = record(message.content, ARRAYS_KEY, ArrayRecord, "train message")
    global_state = checked_state(arrays_to_state(arrays), plan.codec, "global model")
    data = load_data(plan, partition_id, context.node_config)
    train_config = client_train_config(plan, round_number, partition_id)

    method = Method(plan.personalization)
    local = _stored_state(context, LOCAL_MODEL_KEY, plan.codec)
    start = training_start(
        method,
        local_state=local,
        global_state=global_state,
        alpha=plan.alpha,
        loss=functools.partial(_training_loss, plan.codec, data),
    )
    new_local = _train(plan.codec, start, data, train_config)
    context.state[LOCAL_MODEL_KEY] = state_to_arrays(new_local)
    if method is Method.DITTO:
        personal = _stored_state(context, DITTO_MODEL_KEY, plan.codec)
        model = _model_with(plan.codec, global_state if personal is None else personal)
        train_codec(
            model, data.train, train_config, anchor=global_state, proximal_weight=DITTO_LAMBDA
        )
        context.state[DITTO_MODEL_KEY] = state_to_arrays(state_to_numpy(model))
    if plan.track_local_only:
        local_only = _stored_state(context, LOCAL_ONLY_MODEL_KEY, plan.codec)
        start = global_state if local_only is None else local_only
        context.state[LOCAL_ONLY_MODEL_KEY] = state_to_arrays(
            _train(plan.codec, start, data, train_config)
        )
    content = RecordDict(
        {
            ARRAYS_KEY: state_to_arrays(new_local),
            METRICS_KEY: MetricRecord(
                {"num-examples": data.train_frames, "partition-id": partition_id}
            ),
            META_KEY: ConfigRecord({"architecture-id": plan.codec.architecture_id}),
        }
    )
    return Message(content, reply_to=message)


def evaluate_client(
    message: Message, context: Context, load_data: ClientDataLoader = load_client_data
) -> Message:
    """Held-out L1 of the local-only, global and personal models (module docstring)."""
    plan = plan_of(message)
    partition_id = partition_id_of(context)
    arrays = record(message.content, ARRAYS_KEY, ArrayRecord, "evaluate message")
    global_state = checked_state(arrays_to_state(arrays), plan.codec, "global model")
    data = load_data(plan, partition_id, context.node_config)
    local = _stored_state(context, LOCAL_MODEL_KEY, plan.codec)
    if local is None:
        raise FlowerAppError("evaluate before any training round: no local model yet")
    local_only = _stored_state(context, LOCAL_ONLY_MODEL_KEY, plan.codec)
    models = {
        "global-loss": global_state,
        "personal-loss": _personal_model(
            context, plan, data, local=local, global_state=global_state, local_only=local_only
        ),
    }
    if local_only is not None:
        models["local-only-loss"] = local_only
    metrics: dict[str, MetricValue] = {
        "num-examples": sum(item.shape[1] for item in data.heldout),
        "partition-id": partition_id,
    }
    with _torch_threads(plan.train.threads):
        for key, state in models.items():
            metrics[key] = evaluate_l1(_model_with(plan.codec, state), data.heldout)
    return Message(RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=message)


def _training_loss(codec: CodecConfig, data: ClientData, state: State) -> float:
    return evaluate_l1(_model_with(codec, state), data.train)


def _personal_model(
    context: Context,
    plan: ClientPlan,
    data: ClientData,
    *,
    local: State,
    global_state: State,
    local_only: State | None,
) -> State:
    """The model the client would use now, by its plan's personalization method."""
    method = Method(plan.personalization)
    if method in (Method.MIX70, Method.APFL):
        return training_start(
            method,
            local_state=local,
            global_state=global_state,
            alpha=plan.alpha,
            loss=functools.partial(_training_loss, plan.codec, data),
        )
    if method is Method.FEDAVG:
        return global_state
    if method is Method.FEDAVG_FT:
        return local  # last round's global model, trained on the client's own audio
    if method is Method.DITTO:
        personal = _stored_state(context, DITTO_MODEL_KEY, plan.codec)
        return global_state if personal is None else personal
    if local_only is None:
        raise FlowerAppError("personalization 'local' needs track_local_only")
    return local_only


def make_client_app(load_data: ClientDataLoader = load_client_data) -> ClientApp:
    """A ClientApp whose clients get their features from ``load_data``."""
    app = ClientApp()

    def train(message: Message, context: Context) -> Message:
        return train_client(message, context, load_data)

    def evaluate(message: Message, context: Context) -> Message:
        return evaluate_client(message, context, load_data)

    app.train()(train)
    app.evaluate()(evaluate)
    return app
