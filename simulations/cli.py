"""The lab's commands: ``parley bench …``, ``parley simulate`` and ``parley codec eval``.

They are registered into the product's CLI through the ``parley.commands`` entry point
(pyproject.toml), so :mod:`daemon.cli` never imports :mod:`simulations`: the lab stands beside
the product and may import it, never the other way round (docs/design.md, "Layers").
"""

from __future__ import annotations

import common.offline  # noqa: F401  (before anything imports a dependency that phones home)

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from daemon.cli_support import fail
from simulations.report import print_report

if TYPE_CHECKING:
    from fl.flower.settings import ClientPlan


def simulate(
    out: Annotated[Path, typer.Option("--out", help="Folder for report.json and the plots.")],
    nodes: Annotated[int, typer.Option("--nodes", min=2, help="Number of nodes.")] = 4,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="FL rounds.")] = 2,
    alpha: Annotated[
        float, typer.Option("--alpha", min=0.0, max=1.0, help="Personalization.")
    ] = 0.7,
    personalization: Annotated[
        str | None,
        typer.Option(
            "--personalization",
            help="How each node makes its personal model (fl.personalization: auto, mix70, "
            "apfl, ditto, fedavg_ft, fedavg, local); default: the node's (auto) for real "
            "nodes, mix70 for Flower.",
        ),
    ] = None,
    poison: Annotated[int, typer.Option("--poison", min=0, help="Nodes sending bad bundles.")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Seed for training and poison.")] = 0,
    local_steps: Annotated[int, typer.Option("--local-steps", min=1, help="Steps per round.")] = 60,
    engine: Annotated[str, typer.Option("--engine", help="'real' nodes or 'flower'.")] = "real",
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="Flower engine's client data: 'synthetic' log-mel or the speech 'corpus'.",
        ),
    ] = "synthetic",
    mdns: Annotated[bool, typer.Option("--mdns", help="mDNS on 127.0.0.1.")] = False,
    no_wer: Annotated[
        bool, typer.Option("--no-wer", help="Skip the Whisper ΔWER scoring.")
    ] = False,
) -> None:
    """A multi-node FL study of the codec: real nodes over loopback, or Flower's engine."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if engine not in ("real", "flower"):
        fail(f"--engine must be 'real' or 'flower', got {engine!r}")
    if data not in ("synthetic", "corpus"):
        fail(f"--data must be 'synthetic' or 'corpus', got {data!r}")
    if engine == "real" and data != "synthetic":
        fail("--data is for --engine flower: real nodes always train on the speech corpus")
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True
    ) as progress:
        task = progress.add_task("starting", total=1.0)

        def report(what: str, fraction: float) -> None:
            progress.update(task, description=what, completed=fraction)

        if engine == "flower":
            from simulations.flower_sim import run_flower_simulation, small_plan

            plan = small_plan(alpha=alpha, seed=seed)
            if personalization is not None:
                plan = _with_method(plan, personalization)
            if data == "corpus":
                plan = _corpus_plan(plan, nodes=nodes, out=out, progress=report)
            result = run_flower_simulation(
                nodes=nodes, rounds=rounds, alpha=alpha, seed=seed, out_dir=out, plan=plan
            )
        else:
            from fl.personalize import AUTO
            from simulations.node_sim import SimulationSettings, main_sync

            try:
                settings = SimulationSettings(
                    nodes=nodes,
                    rounds=rounds,
                    alpha=alpha,
                    personalization=AUTO if personalization is None else personalization,
                    poison=poison,
                    seed=seed,
                    local_steps=local_steps,
                    mdns=mdns,
                    measure_wer=not no_wer,
                )
            except ValueError as error:
                fail(str(error))
            result = main_sync(settings, out_dir=out, cache_dir=None, progress=report)
    if engine == "flower":
        last = result["per_round"][-1]
        summary = {
            "data_source": result["data_source"],
            "final_losses": {
                key: last[key] for key in ("local_only_loss", "global_loss", "personal_loss")
            },
        }
        report_name = "flower_simulation.json"
    else:
        summary = {
            key: result[key] for key in ("honest_heldout_l1_final", "personal_best_fraction")
        }
        report_name = "report.json"
    print_report(summary)
    print(f"report: {out / report_name}")  # plain print: rich would wrap a long path


def _with_method(plan: ClientPlan, personalization: str) -> ClientPlan:
    """The Flower plan with a personalization method; ``auto`` is the node's rule by its own
    amount of audio, which a Flower client plan does not have: a method name is needed."""
    import dataclasses

    from fl.personalize import METHODS

    names = [method.value for method in METHODS]
    if personalization not in names:
        fail(
            f"--personalization for --engine flower must be one of {', '.join(names)}, "
            f"got {personalization!r}"
        )
    return dataclasses.replace(plan, personalization=personalization)


def _corpus_plan(
    plan: ClientPlan, *, nodes: int, out: Path, progress: Callable[[str, float], None]
) -> ClientPlan:
    """``plan`` on log-mel features of the synthesized corpus, one speaker per client (clients
    past the corpus's speakers get shifted variants of them), written under ``out/features``."""
    import dataclasses

    from simulations.corpus import DEFAULT_SPEAKERS, CorpusError, default_cache_dir
    from simulations.flower_sim import prepare_corpus_features

    progress("synthesizing the corpus and its features", 0.0)
    try:
        features = prepare_corpus_features(
            out / "features",
            cache_dir=default_cache_dir(),
            speakers=DEFAULT_SPEAKERS[: min(nodes, len(DEFAULT_SPEAKERS))],
        )
    except CorpusError as error:
        fail(f"cannot build the corpus: {error}")
    return dataclasses.replace(plan, data_source="prepared", data_dir=str(features))


codec_app = typer.Typer(
    help="The personal speech codec: quality at a bitrate.", no_args_is_help=True
)


@codec_app.command("eval")
def codec_eval(
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the report.")],
    quick: Annotated[bool, typer.Option("--quick", help="A small run (about a minute).")] = False,
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="Corpus cache \\[default: build/corpus].")
    ] = None,
) -> None:
    """ΔWER, mel L1 and bitrate of the codec vs naive mel quantization and Opus, plus FL."""
    from simulations.codec_eval import run_eval
    from simulations.corpus import default_cache_dir

    result = run_eval(
        out_json=json_path,
        cache_dir=cache_dir if cache_dir is not None else default_cache_dir(),
        quick=quick,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print_report({key: result[key] for key in ("settings", "baselines")})


bench_app = typer.Typer(
    help="Benchmarks: JSON with ratios against baselines measured in one run.",
    no_args_is_help=True,
)

JsonOption = Annotated[
    Path | None, typer.Option("--json", help="Also write the JSON report to this file.")
]


@bench_app.command("handshake")
def bench_handshake(json_path: JsonOption = None) -> None:
    """Handshakes per second and transport throughput, against the raw crypto primitives."""
    from simulations.bench_handshake import run

    print_report(run(json_path))


@bench_app.command("node")
def bench_node(json_path: JsonOption = None) -> None:
    """Two nodes on loopback: start, mDNS discovery, handshake and round times."""
    from simulations.bench_node import run

    print_report(run(json_path))


@bench_app.command("fl")
def bench_fl(json_path: JsonOption = None) -> None:
    """100 Flower clients x 5 rounds and 16 real nodes x 3 rounds, timed in one run."""
    from simulations.bench_fl import run

    print_report(run(json_path))


@bench_app.command("call")
def bench_call(
    json_path: JsonOption = None,
    calls: Annotated[
        int, typer.Option("--calls", min=1, max=64, help="Calls at once; >1: the worst call.")
    ] = 1,
    two_way: Annotated[
        bool,
        typer.Option(
            "--two-way", help="Both people speaking at once: per-direction figures, echo, nodes."
        ),
    ] = False,
) -> None:
    """A real paced call over loopback: caption latency, ASR speed, memory."""
    from simulations.bench_call import run, run_two_way

    if two_way:
        print_report(run_two_way(json_path))
        return
    print_report(run(json_path, calls=calls))


@bench_app.command("asr-stream")
def bench_asr_stream(
    json_path: JsonOption = None,
    set_path: Annotated[
        Path | None,
        typer.Option("--set", help="Speech set file (default: the evaluation set)."),
    ] = None,
    voices: Annotated[
        list[str] | None, typer.Option("--voice", help="Only this voice id (repeatable).")
    ] = None,
    no_dtx: Annotated[
        bool, typer.Option("--no-dtx", help="Send every frame (no sender VAD), as before DTX.")
    ] = False,
) -> None:
    """Live captions (through the codec) against offline ones: WERs, lost sentences, CPU."""
    from simulations.bench_asr_stream import EVAL_SET, EvalSetError, run

    try:
        result = run(json_path, set_path=set_path or EVAL_SET, voices=voices or (), dtx=not no_dtx)
    except EvalSetError as error:
        fail(str(error))
    print_report(result)


@bench_app.command("echo")
def bench_echo(json_path: JsonOption = None) -> None:
    """Echo cancellation: ERLE on our TTS through a synthetic room, with near-end speech."""
    from simulations.bench_echo import run

    print_report(run(json_path))


@bench_app.command("speech-pieces")
def bench_speech_pieces(json_path: JsonOption = None) -> None:
    """A cue's speech whole vs in pieces: time to first audio (CPU s), total CPU, WER."""
    from simulations.bench_speech_pieces import run

    report = run(json_path)
    print_report(
        {
            language: {
                mode: {
                    key: value for key, value in figures.items() if key not in ("per_line", "heard")
                }
                for mode, figures in report[language].items()
                if mode in ("whole", "pieces")
            }
            for language in ("pt", "en")
        }
    )


@bench_app.command("web")
def bench_web(json_path: JsonOption = None) -> None:
    """The web server: list page p95 (1,000 recordings), SSE delay, 200 MiB upload, RSS added."""
    from simulations.bench_web import run

    print_report(run(json_path))


@bench_app.command("dub")
def bench_dub(json_path: JsonOption = None) -> None:
    """Lip-synced dub of a 30 s 720p test video: fps, stage p50s, sync, PSNR vs pass-through."""
    from simulations.bench_dub import run

    print_report(run(json_path))


@bench_app.command("caption")
def bench_caption(
    json_path: JsonOption = None,
    minutes: Annotated[
        float,
        typer.Option("--minutes", help="Audio to caption (a prefix of the set).", min=0.1),
    ] = 10.0,
    recording_set: Annotated[
        str,
        typer.Option("--set", help="eval (reported figures) or tuning (what parley was tuned on)."),
    ] = "eval",
    systems: Annotated[
        str,
        typer.Option(
            "--systems",
            help="Comma-separated subset of parley, parley_keep_silence, faster_whisper, "
            "faster_whisper_vad (parley and faster_whisper always).",
        ),
    ] = "parley,parley_keep_silence,faster_whisper,faster_whisper_vad",
) -> None:
    """File captioning vs faster-whisper's transcribe (with/without VAD): RTF and WER."""
    from simulations.bench_caption import run

    try:
        report = run(
            json_path,
            minutes=minutes,
            recording_set=recording_set,
            systems_wanted=systems.split(","),
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    print_report(report)


@bench_app.command("languages")
def bench_languages(json_path: JsonOption = None) -> None:
    """ASR WER per language and voice, language identification, chrF per translation route."""
    from simulations.bench_languages import run

    print_report(run(json_path))


@bench_app.command("reliability")
def bench_reliability(
    json_path: JsonOption = None,
    quick: Annotated[bool, typer.Option("--quick", help="CI-sized budgets (~3 min).")] = False,
) -> None:
    """Fuzzing, hostile peers, kill -9 crash trials, load and multi-host namespaces."""
    import simulations

    # The scenarios live with the test suite (tests/reliability): this needs a source checkout.
    checkout = Path(simulations.__file__).resolve().parents[1]
    if not (checkout / "tests" / "reliability").is_dir():
        fail(f"parley bench reliability needs a source checkout (no tests/ in {checkout})")
    sys.path.insert(0, str(checkout))
    from simulations.bench_reliability import run

    print_report(run(json_path, quick=quick))


def register(app: typer.Typer) -> None:
    """Add the lab's commands to ``app`` (the ``parley.commands`` entry point)."""
    app.command("simulate")(simulate)
    app.add_typer(codec_app, name="codec")
    app.add_typer(bench_app, name="bench")
