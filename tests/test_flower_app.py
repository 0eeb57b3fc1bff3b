"""The Flower app: the client/server halves against the node's aggregation, in-process and on Ray.

The in-process tests drive the ClientApp functions and the Strategy with hand-built Flower
messages (no Ray). The simulation test runs 4 clients for 2 rounds on Flower's simulation
runtime and checks what the server received and computed against independent replays: each
client's training redone here from its seed, the global model as a direct numpy weighted mean,
and the same inputs through :func:`fl.aggregate.aggregate_round` as a node would run it.
"""

from __future__ import annotations

import common.offline  # noqa: F401

import dataclasses
import ipaddress
import json
import os
import shutil
import tomllib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from codec.config import CodecConfig
from codec.model import new_model, state_to_numpy
from fl.aggregate import AggregationResult, PeerUpdate, aggregate_round
from fl.config import AggregationConfig
from fl.personalize import personalize
from fl.train import train_codec

# typer 0.20 (imported by flwr) reaches for a helper click 8.5 deprecates: importing it warns
# (an error under this suite's filterwarnings), and the warning is about typer, not parley.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from flwr.app import (
        ConfigRecord,
        Context,
        Error,
        Message,
        MessageType,
        MetricRecord,
        RecordDict,
    )
    from flwr.supercore.task_identity import TaskIdentity

    from fl.flower_app import (
        ARRAYS_KEY,
        CONFIG_KEY,
        LOCAL_MODEL_KEY,
        LOCAL_ONLY_MODEL_KEY,
        METRICS_KEY,
        PLAN_KEY,
        REFERENCE_SAMPLE_COUNT,
        RUN_CONFIG_KEYS,
        ClientPlan,
        FlowerAppError,
        FlowerRunError,
        PersonalizedFedAvg,
        ServerSettings,
        arrays_to_state,
        client_train_config,
        evaluate_client,
        load_client_data,
        load_prepared_client_data,
        speaker_variant,
        state_to_arrays,
        synthetic_client_data,
        train_client,
    )
    from simulations.flower_sim import (
        FLOWER_PROJECT_DIR,
        descendant_pids,
        prepare_corpus_features,
        run_flower_simulation,
        small_plan,
    )

State = dict[str, np.ndarray]


def _flat(state: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(state[k], dtype=np.float64).ravel() for k in sorted(state)])


@pytest.fixture
def task_identity() -> Iterator[None]:
    """Flower stamps every new message with the current task's ids (set by its runtimes)."""
    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 7, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def _instruction(
    kind: str, plan: ClientPlan, state: State, round_number: int, node: int
) -> Message:
    config = ConfigRecord({PLAN_KEY: plan.to_json(), "server-round": round_number})
    content = RecordDict({ARRAYS_KEY: state_to_arrays(state), CONFIG_KEY: config})
    return Message(content, dst_node_id=node, message_type=kind)


def _context(partition_id: int, node: int = 11) -> Context:
    return Context(
        run_id=7,
        node_id=node,
        node_config={"partition-id": partition_id, "num-partitions": 4},
        state=RecordDict(),
        run_config={},
    )


# --- personalize: the client half of aggregate_round -----------------------------------------


def test_personalize_is_aggregate_rounds_last_step() -> None:
    rng = np.random.default_rng(3)
    shapes = {"w": (5, 4), "b": (5,)}
    states = [
        {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
        for _ in range(4)
    ]
    local = PeerUpdate("me", "arch", 40, states[0])
    peers = [PeerUpdate(f"p{i}", "arch", 10 * (i + 1), states[i + 1]) for i in range(3)]
    config = AggregationConfig(alpha=0.6, clip_norm_ratio=1e6)
    result = aggregate_round(local, peers, config)
    mixed = personalize(states[0], result.global_state, 0.6)
    for name in shapes:
        np.testing.assert_allclose(mixed[name], result.personal_state[name], rtol=1e-6, atol=1e-6)
        # ...and the formula itself, written out.
        direct = 0.6 * states[0][name].astype(np.float64) + 0.4 * result.global_state[name]
        np.testing.assert_allclose(mixed[name], direct, rtol=1e-6, atol=1e-7)
        assert mixed[name].dtype == np.float32


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_personalize_refuses_a_bad_alpha(alpha: float) -> None:
    state = {"w": np.ones(3, np.float32)}
    with pytest.raises(ValueError, match="alpha"):
        personalize(state, state, alpha)


def test_personalize_refuses_mismatched_states() -> None:
    with pytest.raises(ValueError, match="missing"):
        personalize({"w": np.ones(3)}, {"v": np.ones(3)}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        personalize({"w": np.ones(3)}, {"w": np.ones(4)}, 0.5)


# --- settings --------------------------------------------------------------------------------


def test_client_plan_round_trips_through_json() -> None:
    plan = small_plan(alpha=0.4, seed=9)
    assert ClientPlan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("alpha"),
        lambda d: d.update(alpha=2.0),
        lambda d: d.update(data_source="ftp"),
        lambda d: d["codec"].update(hidden=-1),
        lambda d: d["train"].update(steps="many"),
        lambda d: d.update(extra=1),
    ],
)
def test_client_plan_rejects_bad_json_with_its_own_error(mutate: object) -> None:
    data = json.loads(small_plan().to_json())
    mutate(data)  # type: ignore[operator]
    with pytest.raises(FlowerAppError):
        ClientPlan.from_json(json.dumps(data))
    with pytest.raises(FlowerAppError):
        ClientPlan.from_json("{not json")


def test_project_run_config_is_exactly_what_the_server_understands() -> None:
    project = tomllib.loads((FLOWER_PROJECT_DIR / "pyproject.toml").read_text())
    app = project["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "fl.flower_app:server_app",
        "clientapp": "fl.flower_app:client_app",
    }
    run_config = app["config"]
    assert set(run_config) == set(RUN_CONFIG_KEYS)
    settings = ServerSettings.from_run_config(run_config)
    assert settings.rounds == run_config["num-server-rounds"]
    assert settings.plan.alpha == settings.aggregation.alpha == run_config["alpha"]
    assert settings.plan.codec == CodecConfig()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num-server-round": 3}, "unknown run config keys"),
        ({"alpha": "high"}, "alpha must be float"),
        ({"num-supernodes": 0}, "expected_nodes"),
        ({"robust": "mode"}, "robust"),
        ({"local-steps": True}, "local-steps must be int"),
    ],
)
def test_bad_run_config_is_refused_with_a_one_line_reason(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(FlowerAppError, match=message):
        ServerSettings.from_run_config(overrides)


# --- client data -----------------------------------------------------------------------------


def test_synthetic_clients_are_deterministic_and_distinct() -> None:
    first = synthetic_client_data(3, seed=1, utterances=2, frames=50)
    again = synthetic_client_data(3, seed=1, utterances=2, frames=50)
    other = synthetic_client_data(4, seed=1, utterances=2, frames=50)
    assert len(first.train) == 2 and len(first.heldout) == 1
    assert first.train_frames == 100
    for a, b in zip(first.train, again.train, strict=True):
        np.testing.assert_array_equal(a, b)
    assert first.train[0].shape == (80, 50) and first.train[0].dtype == np.float32
    # Non-IID: the average spectra of two clients differ clearly.
    mean_first = np.mean([item.mean(axis=1) for item in first.train], axis=0)
    mean_other = np.mean([item.mean(axis=1) for item in other.train], axis=0)
    assert np.abs(mean_first - mean_other).max() > 0.1
    # Whisper's clamp: nothing more than 2 units under the loudest value of an utterance.
    for item in first.train:
        assert item.max() - item.min() <= 2.0 + 1e-6


def test_speaker_variant_shifts_and_tilts_the_mel_axis() -> None:
    rng = np.random.default_rng(0)
    mel = rng.normal(size=(80, 30)).astype(np.float32)
    assert speaker_variant(mel, 0) is mel
    shifted = speaker_variant(mel, 1)  # +1 bin, tilt +0.05 across the axis
    ramp = np.linspace(-0.5, 0.5, 80)[:, None]
    np.testing.assert_allclose(shifted[1:] - 0.05 * ramp[1:], mel[:-1], atol=1e-6)
    np.testing.assert_allclose(shifted[0] - 0.05 * ramp[0], mel[0], atol=1e-6)
    with pytest.raises(FlowerAppError):
        speaker_variant(mel, -1)


def test_prepared_features_map_clients_to_speakers_and_variants(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    speakers = []
    for index in range(2):
        arrays = {
            "train-000": rng.normal(size=(80, 40)).astype(np.float32),
            "heldout-000": rng.normal(size=(80, 20)).astype(np.float32),
        }
        np.savez(tmp_path / f"speaker-{index}.npz", **arrays)
        speakers.append(arrays)
    (tmp_path / "speakers.json").write_text(json.dumps({"speakers": ["a", "b"]}))
    client_1 = load_prepared_client_data(tmp_path, 1, 80)
    np.testing.assert_array_equal(client_1.train[0], speakers[1]["train-000"])
    client_3 = load_prepared_client_data(tmp_path, 3, 80)  # speaker 1, variant 1
    np.testing.assert_allclose(
        client_3.heldout[0], speaker_variant(speakers[1]["heldout-000"], 1), atol=0
    )
    plan = dataclasses.replace(small_plan(), data_source="prepared", data_dir="/nowhere")
    # A SuperNode's own data-dir wins over the plan's.
    from_node = load_client_data(plan, 1, {"data-dir": str(tmp_path)})
    np.testing.assert_array_equal(from_node.train[0], client_1.train[0])
    with pytest.raises(FlowerAppError, match="no prepared features"):
        load_client_data(plan, 1, {})
    with pytest.raises(FlowerAppError, match="shape"):
        load_prepared_client_data(tmp_path, 0, 64)


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed")
def test_corpus_features_are_the_speakers_log_mel(tmp_path: Path) -> None:
    from media.audio import load_audio
    from media.features import log_mel
    from simulations.corpus import DEFAULT_SPEAKERS, VoiceEngine, build_corpus

    flite = [spec for spec in DEFAULT_SPEAKERS if spec.engine is VoiceEngine.FLITE][:2]
    cache = tmp_path / "corpus"
    out = prepare_corpus_features(
        tmp_path / "features",
        cache_dir=cache,
        speakers=flite,
        train_per_speaker=1,
        heldout_per_speaker=1,
    )
    corpus = build_corpus(cache, speakers=flite, train_per_speaker=1, heldout_per_speaker=1)
    plan = dataclasses.replace(small_plan(), data_source="prepared", data_dir=str(out))
    for partition in range(4):
        speaker = corpus.speakers[partition % 2]
        expected = log_mel(load_audio(speaker.train[0].wav_path))
        data = load_client_data(plan, partition, {})
        np.testing.assert_allclose(
            data.train[0], speaker_variant(expected, partition // 2), atol=1e-6
        )
        assert len(data.heldout) == 1


# --- the ClientApp, in-process ---------------------------------------------------------------


def test_client_keeps_its_local_model_and_mixes_the_next_global_into_it(
    task_identity: None,
) -> None:
    plan = small_plan(alpha=0.7, seed=5)
    init = state_to_numpy(new_model(plan.codec))
    context = _context(partition_id=2)

    reply = train_client(_instruction(MessageType.TRAIN, plan, init, 1, 11), context)
    local_1 = arrays_to_state(reply.content[ARRAYS_KEY])
    # Oracle: the same training done directly from the shared init with the client's seed.
    data = load_client_data(plan, 2, context.node_config)
    model = new_model(plan.codec, init)
    train_codec(model, data.train, client_train_config(plan, 1, 2))
    for name, array in state_to_numpy(model).items():
        np.testing.assert_allclose(local_1[name], array, rtol=1e-5, atol=1e-6)
    assert reply.content[METRICS_KEY]["num-examples"] == data.train_frames
    stored = arrays_to_state(context.state[LOCAL_MODEL_KEY])
    assert all(np.array_equal(stored[k], local_1[k]) for k in local_1)
    assert LOCAL_ONLY_MODEL_KEY in context.state

    # Round 2 with zero steps: the new local is exactly where training would start,
    # alpha * local_1 + (1 - alpha) * global.
    frozen = dataclasses.replace(plan, train=dataclasses.replace(plan.train, steps=0))
    rng = np.random.default_rng(8)
    global_2 = {
        k: (v + rng.normal(scale=0.01, size=v.shape)).astype(np.float32) for k, v in init.items()
    }
    reply = train_client(_instruction(MessageType.TRAIN, frozen, global_2, 2, 11), context)
    local_2 = arrays_to_state(reply.content[ARRAYS_KEY])
    for name in init:
        expected = 0.7 * local_1[name].astype(np.float64) + 0.3 * global_2[name]
        np.testing.assert_allclose(local_2[name], expected, rtol=1e-6, atol=1e-6)

    metrics = evaluate_client(_instruction(MessageType.EVALUATE, plan, global_2, 2, 11), context)
    losses = metrics.content[METRICS_KEY]
    for key in ("global-loss", "personal-loss", "local-only-loss"):
        assert 0.0 < losses[key] < 5.0


def test_client_refuses_a_global_model_of_another_shape(task_identity: None) -> None:
    plan = small_plan()
    wrong = state_to_numpy(new_model(CodecConfig(hidden=8, latent_dim=16, blocks=1)))
    with pytest.raises(FlowerAppError, match="global model"):
        train_client(_instruction(MessageType.TRAIN, plan, wrong, 1, 11), _context(0))
    with pytest.raises(FlowerAppError, match="partition-id"):
        init = state_to_numpy(new_model(plan.codec))
        context = _context(0)
        context.node_config = {}
        train_client(_instruction(MessageType.TRAIN, plan, init, 1, 11), context)


# --- the Strategy, in-process ----------------------------------------------------------------


class _FakeGrid:
    def __init__(self, node_ids: Sequence[int]) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return self.node_ids


def _reply(instruction: Message, state: State, count: int, arch: str) -> Message:
    content = RecordDict(
        {
            ARRAYS_KEY: state_to_arrays(state),
            METRICS_KEY: MetricRecord({"num-examples": count, "partition-id": 0}),
            "meta": ConfigRecord({"architecture-id": arch}),
        }
    )
    return Message(content, reply_to=instruction)


def test_strategy_aggregates_like_the_node_and_rejects_bad_clients(task_identity: None) -> None:
    plan = small_plan()
    codec = plan.codec
    settings = ServerSettings(
        plan=plan,
        aggregation=AggregationConfig(alpha=plan.alpha, clip_norm_ratio=1e6),
        rounds=1,
        expected_nodes=4,
    )
    strategy = PersonalizedFedAvg(settings)
    init = state_to_numpy(new_model(codec))
    messages = list(
        strategy.configure_train(1, state_to_arrays(init), ConfigRecord(), _FakeGrid([1, 2, 3, 4]))
    )
    assert [m.metadata.dst_node_id for m in messages] == [1, 2, 3, 4]
    rng = np.random.default_rng(4)
    good = [
        {k: (v + rng.normal(scale=0.02, size=v.shape)).astype(np.float32) for k, v in init.items()}
        for _ in range(2)
    ]
    poisoned = {k: np.full(v.shape, np.nan, np.float32) for k, v in init.items()}
    replies = [
        _reply(messages[0], good[0], 300, codec.architecture_id),
        _reply(messages[1], good[1], 100, codec.architecture_id),
        _reply(messages[2], poisoned, 100, codec.architecture_id),
        _reply(messages[3], good[1], 100, "csm-v1-m80-d32-h64-b2-s4-k5-a2"),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics is not None and metrics["rejected"] == 2
    report = strategy.train_reports[0]
    assert report.replies == 4 and report.participants == 2
    assert any("non-finite" in reason for reason in report.rejected)
    assert any("architecture" in reason for reason in report.rejected)
    new_global = arrays_to_state(arrays)
    # Oracle: the sample-weighted mean of the good clients and the reference (weight 1).
    for name in init:
        expected = (
            300 * good[0][name].astype(np.float64)
            + 100 * good[1][name]
            + REFERENCE_SAMPLE_COUNT * init[name]
        ) / (400 + REFERENCE_SAMPLE_COUNT)
        np.testing.assert_allclose(new_global[name], expected, rtol=1e-5, atol=1e-6)


def test_strategy_fails_loudly_when_a_client_fails(task_identity: None) -> None:
    plan = small_plan()
    settings = ServerSettings(plan=plan, rounds=1, expected_nodes=2)
    strategy = PersonalizedFedAvg(settings)
    init = state_to_numpy(new_model(plan.codec))
    messages = list(
        strategy.configure_train(1, state_to_arrays(init), ConfigRecord(), _FakeGrid([1, 2]))
    )
    replies = [
        _reply(messages[0], init, 10, plan.codec.architecture_id),
        Message(Error(code=0, reason="ClientApp crashed: boom"), reply_to=messages[1]),
    ]
    with pytest.raises(FlowerRunError, match="1 of 2 clients replied.*boom"):
        strategy.aggregate_train(1, replies)
    # A client that never answered at all is just as fatal.
    with pytest.raises(FlowerRunError, match="1 of 2 clients replied"):
        strategy.aggregate_train(1, replies[:1])


# --- Flower's simulation runtime (Ray) -------------------------------------------------------


def _listening_addresses(pids: Sequence[int]) -> set[str]:
    """Local addresses of the TCP sockets in LISTEN state that ``pids`` hold (from /proc)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                link = os.readlink(descriptor)
            except OSError:  # closed since the listing (the listing's own fd, for one)
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    addresses = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address = fields[1].rsplit(":", 1)[0]
                raw = bytes.fromhex(address)
                # /proc prints addresses as host-order 32-bit words.
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                addresses.add(str(ipaddress.ip_address(words)))
    return addresses


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class _Recorder:
    def __init__(self) -> None:
        self.rounds: list[tuple[int, PeerUpdate, list[PeerUpdate], AggregationResult]] = []
        self.listening: set[str] = set()
        self.ray_processes = 0

    def on_aggregate(
        self,
        round_number: int,
        reference: PeerUpdate,
        clients: Sequence[PeerUpdate],
        result: AggregationResult,
    ) -> None:
        self.rounds.append((round_number, reference, list(clients), result))
        if round_number == 1:
            # Mid-run: Ray's GCS, raylet, workers and agents are all up, all our descendants.
            pids = [os.getpid(), *descendant_pids(os.getpid())]
            self.ray_processes = len(pids) - 1
            self.listening = _listening_addresses(pids)


def _partition(peer_id: str) -> int:
    return int(peer_id.rsplit("partition-", 1)[1])


@pytest.mark.slow
def test_simulation_runs_the_node_aggregation_on_ray(tmp_path: Path) -> None:
    nodes, rounds, alpha = 4, 2, 0.7
    plan = small_plan(alpha=alpha, seed=3)
    recorder = _Recorder()
    report = run_flower_simulation(
        nodes=nodes,
        rounds=rounds,
        alpha=alpha,
        seed=3,
        out_dir=tmp_path,
        plan=plan,
        observer=recorder,
    )
    assert [entry["replies"] for entry in report["per_round"]] == [nodes] * rounds
    assert [entry["evaluate_replies"] for entry in report["per_round"]] == [nodes] * rounds
    assert json.loads((tmp_path / "flower_simulation.json").read_text())["nodes"] == nodes
    for entry in report["per_round"]:
        assert entry["participants"] == nodes and entry["rejected"] == []
        for key in ("local_only_loss", "global_loss", "personal_loss"):
            assert 0.0 < entry[key] < 5.0

    assert [number for number, *_ in recorder.rounds] == [1, 2]
    # Ray listened, and only on loopback.
    assert recorder.ray_processes >= 3 and recorder.listening
    assert all(_is_loopback(address) for address in recorder.listening), recorder.listening
    init = state_to_numpy(new_model(plan.codec))
    previous_global = init
    local_models: dict[int, State] = {}
    aggregation = AggregationConfig(alpha=alpha, min_bundles_for_robust=6)
    for round_number, reference, clients, result in recorder.rounds:
        assert sorted(_partition(c.peer_id) for c in clients) == list(range(nodes))
        # The server's reference is the global model it sent out this round.
        for name in init:
            np.testing.assert_array_equal(reference.state[name], previous_global[name])
        # Each client's weights, replayed here: its training from its own starting point.
        for client in clients:
            partition = _partition(client.peer_id)
            data = load_client_data(plan, partition, {})
            start = (
                previous_global
                if round_number == 1
                else personalize(local_models[partition], previous_global, alpha)
            )
            model = new_model(plan.codec, start)
            train_codec(model, data.train, client_train_config(plan, round_number, partition))
            replayed = state_to_numpy(model)
            for name in init:
                np.testing.assert_allclose(client.state[name], replayed[name], rtol=1e-4, atol=1e-5)
            assert client.sample_count == data.train_frames
            local_models[partition] = replayed
        # The global model: the node's aggregation on the same inputs...
        again = aggregate_round(reference, clients, aggregation, round_number=round_number)
        # ...and, with nothing clipped, a direct weighted mean.
        assert result.record.statistic == "weighted_mean"
        assert not any(p.clipped for p in result.record.participants)
        total = REFERENCE_SAMPLE_COUNT + sum(c.sample_count for c in clients)
        for name in init:
            np.testing.assert_allclose(result.global_state[name], again.global_state[name], atol=0)
            direct = REFERENCE_SAMPLE_COUNT * previous_global[name].astype(np.float64)
            for client in clients:
                direct = direct + client.sample_count * client.state[name].astype(np.float64)
            np.testing.assert_allclose(
                result.global_state[name], direct / total, rtol=1e-5, atol=1e-6
            )
        previous_global = result.global_state
    # FL did something: the global model moved away from the shared init.
    assert np.linalg.norm(_flat(previous_global) - _flat(init)) > 0.0
