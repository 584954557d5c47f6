"""The ``fruits`` command: ``stream``, ``refit-pca``, ``model``, ``drop``, ``stage``, ``identify``, ``serve``, ``status``,
``files`` and ``retry``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from fruits.config import Config, allowed_values, default_value, load_config
from fruits.errors import Busy, Failed, FruitsError, Refused, Stopped, Unavailable
from fruits.home.files import STATES
from fruits.home.home import Home
from fruits.landing.writers import WriterLease

log = logging.getLogger("fruits")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", help="lakehouse root: local path or Hadoop URI (env FRUITS_HOME)")
    parser.add_argument("--config", help="TOML file overriding conf/fruits.toml")
    parser.add_argument("--log-level", default="INFO", help="Python log level (default INFO)")


def _spark_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--master", help=f"Spark master URL (default {default_value('spark', 'master')}; env FRUITS_MASTER)")
    parser.add_argument(
        "--conf", action="append", default=[], type=_spark_setting, metavar="KEY=VALUE",
        help="a Spark setting on top of [spark.conf] and the command's [stream|pca.spark_conf], as with spark-submit "
        "(repeatable)",
    )


def _spark_setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. spark.sql.shuffle.partitions=4")
    return key.strip(), value.strip()


def _runtime_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime", choices=allowed_values("model", "runtime"),
        help=f"model runtime (default {default_value('model', 'runtime')}; env FRUITS_RUNTIME)",
    )
    parser.add_argument(
        "--precision", choices=allowed_values("model", "precision"),
        help=f"bf16: openvino on bf16 CPUs; int8: openvino quantized with NNCF; auto: the fastest that passes the accuracy gate here (default {default_value('model', 'precision')}; env FRUITS_PRECISION)",
    )
    parser.add_argument(
        "--views", choices=allowed_values("model", "views"),
        help=f"rot4: features are the mean of the photo's 4 rotations, 4x the inference (default {default_value('model', 'views')}; env FRUITS_VIEWS)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``fruits`` argument parser: one sub-command per job; defaults come from conf/fruits.toml, choices from
    the modes of :mod:`fruits.config`."""
    parser = argparse.ArgumentParser(prog="fruits", description="Fruits! image ingestion service")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_stream_parser, _refit_parser, _model_parsers, _landing_parsers, _reader_parsers):
        add(commands)
    return parser


def _stream_parser(commands: Any) -> None:
    stream = commands.add_parser("stream", help="featurize images landing in HOME/landing into HOME/tables/features")
    _common(stream)
    _spark_flags(stream)
    stream.add_argument("--available-now", action="store_true", help="process what is there, then exit 0")
    stream.add_argument("--trigger", help=f"micro-batch interval (default {default_value('stream', 'trigger')})")
    stream.add_argument(
        "--max-files-per-trigger", type=int,
        help=f"files per micro-batch at most (default {default_value('stream', 'max_files_per_trigger')})",
    )
    stream.add_argument("--weights", help="'imagenet' (default, Keras download) or a local MobileNetV2 weights file")
    _runtime_flags(stream)


def _refit_parser(commands: Any) -> None:
    refit = commands.add_parser("refit-pca", help="fit PCA over the features table and write HOME/tables/pca")
    _common(refit)
    _spark_flags(refit)
    refit.add_argument("--k", type=int, help=f"number of principal components (default {default_value('pca', 'k')})")
    refit.add_argument("--variance", type=float, help="instead of --k: the smallest k explaining this share, e.g. 0.95")
    refit.add_argument("--full", action="store_true", help="refit on every row even when an incremental refit is possible")
    refit.add_argument("--every", help="stay in the foreground and refit at this interval, e.g. 10m")
    refit.add_argument("--engine", choices=allowed_values("pca", "engine"),
                       help=f"where the refit runs: auto, local (no JVM) or spark (default {default_value('pca', 'engine')}; [pca] engine)")
    refit.add_argument(
        "--no-compact", action="store_true",
        help="do not compact the features and quarantine tables (Delta OPTIMIZE) before fitting ([compaction] enabled)",
    )


def _model_parsers(commands: Any) -> None:
    model = commands.add_parser("model", help="the home's active model; switch the home to another, prune old ones")
    _common(model)
    model.add_argument("--json", action="store_true", help="print one JSON object")
    actions = model.add_subparsers(dest="model_command")
    switch = actions.add_parser("switch", help="featurize the home's history again under another model, then make it "
                                "the active one (beside the running stream; run it again to resume it)")
    _common(switch)
    _spark_flags(switch)
    switch.add_argument("--weights", help="'imagenet' or a local MobileNetV2 weights file (default: the active model's)")
    _runtime_flags(switch)
    switch.add_argument("--leave-out-missing", action="store_true",
                        help="leave out the photos whose originals are gone (listed) instead of refusing")
    switch.add_argument("--no-refit", action="store_true", help="do not refit PCA after the switch")
    switch.add_argument("--abandon", action="store_true",
                        help="give up the switch under way: its table is deleted, the active model stays")
    prune = actions.add_parser("prune", help="delete the features tables of retired models")
    _common(prune)
    prune.add_argument("--dry-run", action="store_true", help="list what would be deleted")


def _landing_parsers(commands: Any) -> None:
    drop = commands.add_parser("drop", help="copy images into HOME/landing atomically (keeps class sub-folders)")
    _common(drop)
    drop.add_argument("sources", nargs="+", metavar="FILE_OR_DIR", help="image files, or folders of class folders")
    drop.add_argument("--label", help="put the images under landing/LABEL/")

    stage = commands.add_parser("stage", help="watch an inbox and promote complete files into HOME/landing")
    _common(stage)
    stage.add_argument("--inbox", required=True, help="folder where other tools write files slowly")
    stage.add_argument("--stable-seconds", type=float, help="unchanged this long = complete, without a close event")


def _reader_parsers(commands: Any) -> None:
    identify = commands.add_parser("identify", help="what fruit is this? nearest labelled rows in the PCA space")
    _common(identify)
    identify.add_argument("photos", nargs="+", metavar="PHOTO")
    identify.add_argument("--weights", help="the weights the stream used (default: the configured ones)")
    _runtime_flags(identify)
    identify.add_argument("--json", action="store_true", help="one JSON object per line per photo")

    files = commands.add_parser("files", help="the file ledger: every discovered file and its outcome (no Spark needed)")
    _common(files)
    files.add_argument("--state", choices=STATES, help="only files in this state")
    files.add_argument("--json", action="store_true", help="one JSON object per line per file")
    files.add_argument("--limit", type=int, default=0, help="at most this many files (0: all)")

    retry = commands.add_parser(
        "retry", help="send quarantined files through the stream again: a verdict can be undone (no Spark needed)"
    )
    _common(retry)
    retry.add_argument("--reason", help="only files whose quarantine reason contains TEXT, or whose cause is TEXT")
    retry.add_argument("--path", dest="path_glob", metavar="GLOB", help="only files whose path matches GLOB (e.g. 'Banana/*')")
    retry.add_argument("--dry-run", action="store_true", help="list the files, ask for nothing")

    serve = commands.add_parser("serve", help="HTTP API, web page and live dashboard for HOME (no Spark)")
    _common(serve)
    serve.add_argument("--host", help=f"address to listen on (default {default_value('web', 'host')})")
    serve.add_argument("--port", type=int, help=f"port (default {default_value('web', 'port')})")
    serve.add_argument("--token", help="bearer token every API endpoint requires (env FRUITS_TOKEN; default none)")
    serve.add_argument("--allow-no-token", action="store_true", default=None,
                       help="listen on a non-loopback --host without a token anyway (anyone reaching it reads the photos)")
    serve.add_argument("--weights", help="the weights the stream used, for identify (default: the configured ones)")
    _runtime_flags(serve)

    status = commands.add_parser("status", help="tables, row counts and the last refit (no Spark needed)")
    _common(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")


# The config section holding each Spark command's own settings (``[stream.spark_conf]``, ``[pca.spark_conf]``).
COMMAND_SECTIONS = {"stream": "stream", "refit-pca": "pca"}


def config_from_args(args: argparse.Namespace) -> Config:
    """The merged configuration, with the command-line flags on top."""
    overrides: dict[str, dict[str, Any]] = {
        "paths": {"home": args.home},
        "spark": {"master": getattr(args, "master", None)},
        "stream": {
            "trigger": getattr(args, "trigger", None),
            "max_files_per_trigger": getattr(args, "max_files_per_trigger", None),
        },
        "model": {
            "weights": getattr(args, "weights", None),
            "runtime": getattr(args, "runtime", None),
            "precision": getattr(args, "precision", None),
            "views": getattr(args, "views", None),
        },
        "pca": {"k": getattr(args, "k", None), "every": getattr(args, "every", None), "variance": getattr(args, "variance", None),
                "engine": getattr(args, "engine", None)},
        "stage": {"stable_seconds": getattr(args, "stable_seconds", None)},
        "compaction": {"enabled": False if getattr(args, "no_compact", False) else None},
        "web": {"host": getattr(args, "host", None), "port": getattr(args, "port", None), "token": getattr(args, "token", None),
                "allow_no_token": getattr(args, "allow_no_token", None)},
    }
    if getattr(args, "conf", None):  # --conf: on top of [spark.conf] and of the command's own [X.spark_conf]
        overrides[COMMAND_SECTIONS.get(args.command, "stream")]["spark_conf"] = dict(args.conf)
    return load_config(args.config, overrides=overrides)


# The flags and variables that ask for a model (fruits.model.active): a model other than the home's is refused.
MODEL_VARIABLES = {"weights": "FRUITS_WEIGHTS", "runtime": "FRUITS_RUNTIME", "precision": "FRUITS_PRECISION",
                   "views": "FRUITS_VIEWS"}


def asked_model(args: argparse.Namespace) -> dict[str, str]:
    """The model settings this command line asks for: its flags, else the ``FRUITS_*`` variables set."""
    asked = {key: os.environ[var] for key, var in MODEL_VARIABLES.items() if os.environ.get(var)}
    asked.update({key: value for key in MODEL_VARIABLES if (value := getattr(args, key, None)) is not None})
    return asked


def cmd_stream(config: Config, args: argparse.Namespace) -> int:
    from fruits.home.locks import exclusive

    with exclusive(config, "stream"):  # a second stream on this home stops here (LockBusy), before the JVM or the model
        return _stream(config, args)


def _stream(config: Config, args: argparse.Namespace) -> int:
    from fruits.model.active import model_to_run

    from fruits.spark.session import build_spark

    # The home's model (another asked for is refused); its weights resolved (and, for "imagenet", downloaded) before
    # the JVM starts: fail fast and clearly. (An hdfs:// home's registry is read through the JVM: it starts first.)
    home = Home.from_config(config)
    spark = build_spark(config, "stream", COMMAND_SECTIONS["stream"]) if home.needs_spark else None
    run = model_to_run(home.with_spark(spark) if spark else home, asked=asked_model(args))
    config, weights = run.config, run.weights
    log.info("weights %s (%s)", weights.model_id, weights.path)
    from fruits.model.runtimes import make_featurizer

    # Convert the Keras model for the fast runtime (once per weights file, cached) before the JVM starts, too.
    log.info("featurizer %s", make_featurizer(config, weights).model_id)

    from fruits.streaming.ingest import run_stream

    spark = spark or build_spark(config, "stream", COMMAND_SECTIONS["stream"])
    # A requested stop (SIGTERM, Ctrl-C) returns normally; the query's own error is StreamFailed (with the Python
    # traceback in its message).
    files = run_stream(spark, config, weights, available_now=args.available_now, lock_held=True, chosen=run.chosen)
    log.info("stream stopped after %d files", files)
    return 0


def cmd_refit(config: Config, args: argparse.Namespace) -> int:
    from fruits.home.locks import exclusive

    with exclusive(config, "refit-pca"):  # one refit per home: a second one stops at once, before Spark starts
        return _refit(config, args)


def _refit(config: Config, args: argparse.Namespace) -> int:
    from fruits.batch.refit_pca import RefitOutcome, nothing_to_fit
    from fruits.batch.schedule import Refitter, log_outcome, refit_every

    def build_spark():
        from fruits.spark.session import build_spark

        return build_spark(config, "refit-pca", COMMAND_SECTIONS["refit-pca"])

    pca = config.pca
    k, variance, every = pca.k, (pca.variance or None), pca.every
    home = Home.from_config(config)
    skipped = None if every else nothing_to_fit(home, home.pca_store.latest())
    if skipped:  # nothing new: said from the Delta log, without starting a JVM
        log_outcome(RefitOutcome(None, skipped))
        return 0
    # The JVM starts only if a refit runs on Spark ([pca] engine, local_max_rows: docs/refit.md).
    refit = Refitter(config, build=build_spark)
    if not every:
        log_outcome(refit(k, variance, incremental=not args.full))
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # RefitKeepsFailing ends the command with a failure: the orchestrator restarts the service (and alerts).
    refit_every(refit, config, k, variance, every, stop, pca.max_consecutive_failures)
    return 0


def cmd_drop(config: Config, args: argparse.Namespace) -> int:
    from fruits.landing.drop import LedgerRecorder, SourcesMissing, drop, local_folder
    from fruits.landing.stage import ObjectLanding
    from fruits.home.s3 import is_s3

    extensions = list(config.stream.extensions)
    sources = [Path(s) for s in args.sources]
    home = Home.from_config(config)
    with WriterLease.for_home(home) as lease:  # the stream waits for recorded files while this heartbeats
        if is_s3(config.landing):  # one conditional PUT per object, no temporary name (fruits/landing/stage.py)
            landing = ObjectLanding(config.landing, home.ledger, "drop", home.files, lease=lease)
            results = landing.drop(sources, extensions, label=args.label)
        else:
            landing = local_folder(config.landing)
            recorder = LedgerRecorder(home.ledger, landing, "drop", lease)
            results = drop(sources, landing, extensions, label=args.label, recorder=recorder)
    for result in results:
        print(f"{result.note}: {result.source}" + (f" -> {result.target}" if result.target else ""))
    placed = sum(r.note == "placed" for r in results)
    print(f"{placed} placed, {len(results) - placed} not", file=sys.stderr)
    missing = [r.source for r in results if r.note == "no such file or folder"]
    if missing:  # the others were placed: a failure of part of the work
        raise SourcesMissing(missing)
    return 0


def cmd_stage(config: Config, args: argparse.Namespace) -> int:
    from fruits.landing.drop import InboxStager, LedgerRecorder, local_folder
    from fruits.home.names import check_inbox
    from fruits.landing.stage import ObjectLanding
    from fruits.home.s3 import is_s3

    remote = is_s3(config.landing)
    landing = Path(config.landing) if remote else local_folder(config.landing)
    if not remote:
        check_inbox(Path(args.inbox), landing)
    home = Home.from_config(config)
    lease = WriterLease.for_home(home)
    ledger = home.ledger  # kept for the command's life: each commit reads no log again
    stager = InboxStager(
        inbox=Path(args.inbox).resolve(),
        landing=landing,
        recorder=None if remote else LedgerRecorder(ledger, landing, "stage", lease),
        place=ObjectLanding(config.landing, ledger, "stage", home.files, lease=lease).place if remote else None,
        extensions=list(config.stream.extensions),
        stable_seconds=config.stage.stable_seconds,
        settle_seconds=config.stage.settle_seconds,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("staging complete files from %s into %s", stager.inbox, stager.landing)
    with lease:
        stager.run(stop)
    log.info("stage stopped after promoting %d files", stager.promoted)
    return 0


def cmd_model(config: Config, args: argparse.Namespace) -> int:
    if args.model_command == "switch":
        return _model_switch(config, args)
    if args.model_command == "prune":
        return _model_prune(config, args)
    from fruits.reports.models import format_models, models_report

    report = models_report(Home.from_config(config))
    print(json.dumps(report, indent=2) if args.json else format_models(report))
    return 0


def _model_switch(config: Config, args: argparse.Namespace) -> int:
    from fruits.home.locks import exclusive
    from fruits.model.active import target_model

    from fruits.batch.model_switch import switch_model
    from fruits.spark.session import build_spark
    from fruits.spark.signals import stop_on_signals

    home = Home.from_config(config)
    with exclusive(config, "model"):  # one switch or prune per home; the stream runs on meanwhile
        if args.abandon:
            from fruits.batch.model_switch import abandon_switch

            abandoned = abandon_switch(home)
            print(f"abandoned the switch to model {abandoned.number} ({abandoned.model_id})", file=sys.stderr)
            return 0
        spark = build_spark(config, "model-switch", COMMAND_SECTIONS["stream"]) if home.needs_spark else None
        home = home.with_spark(spark) if spark else home
        target = target_model(home, asked=asked_model(args))  # refused (no model, bad flags) before the JVM starts
        spark = spark or build_spark(target.config, "model-switch", COMMAND_SECTIONS["stream"])
        with stop_on_signals() as stop:  # Ctrl-C: stop after the chunk in flight (SwitchStopped), not mid-job
            outcome = switch_model(spark, home, target, leave_out_missing=args.leave_out_missing,
                                   refit=not args.no_refit, stop=stop)
    log.info("switched to model %d (%s): %d photos featurized in %d passes, %.1f s; %d left out",
             outcome.model.number, outcome.model.model_id, outcome.featurized, outcome.passes, outcome.seconds,
             len(outcome.left_out))
    return 0


def _model_prune(config: Config, args: argparse.Namespace) -> int:
    from fruits.batch.model_switch import prune_models
    from fruits.home.locks import exclusive

    with exclusive(config, "model"):
        pruned = prune_models(Home.from_config(config), dry_run=args.dry_run)
    for record in pruned:
        print(f"model {record.number} ({record.model_id}): {'would delete' if args.dry_run else 'deleted'} {record.table}")
    print(f"{len(pruned)} models {'to prune' if args.dry_run else 'pruned'}", file=sys.stderr)
    return 0


def cmd_identify(config: Config, args: argparse.Namespace) -> int:
    from fruits.model.active import model_to_run
    from fruits.model.identify import identify

    run = model_to_run(Home.from_config(config), asked=asked_model(args))
    unread = 0
    for result in identify([Path(p) for p in args.photos], run.config, run.weights):
        unread += "error" in result
        if args.json:
            print(json.dumps(result, ensure_ascii=False))
        elif "error" in result:
            print(f"{result['photo']}: cannot read ({result['error']})")
        else:
            neighbours = ", ".join(f"{n['label']} {n['distance']:.2f}" for n in result["neighbors"])
            print(f"{result['photo']}: {result['predicted']} (confidence {result['confidence']:.0%}; nearest: {neighbours})")
    return 1 if unread else 0  # as `drop` with a missing source: the others were answered, a script must still know


def cmd_files(config: Config, args: argparse.Namespace) -> int:
    from fruits.home.files import file_states, format_file

    rows = file_states(Home.from_config(config), state=args.state)
    if args.limit:
        rows = rows[: args.limit]
    for row in rows:
        if args.json:
            print(json.dumps(row, ensure_ascii=False, default=str))
        else:
            print(format_file(row))
    if not args.json:
        print(f"{len(rows)} files", file=sys.stderr)
    return 0


def cmd_retry(config: Config, args: argparse.Namespace) -> int:
    from fruits.reports.retry import retry_quarantined

    rows = retry_quarantined(Home.from_config(config), reason=args.reason, path_glob=args.path_glob, dry_run=args.dry_run)
    for row in rows:
        print(f"{row['path']}  ({row['reason']})")
    verb = "would be sent" if args.dry_run else "sent"
    print(f"{len(rows)} quarantined files {verb} through the stream again", file=sys.stderr)
    return 0


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from fruits.model.active import model_to_run
    from fruits.model.weights import WeightsUnavailable
    from fruits.web.app import serve

    web = config.web
    try:
        run = model_to_run(Home.from_config(config), asked=asked_model(args))  # another model: refused
        config, weights = run.config, run.weights
    except WeightsUnavailable as exc:  # uploads, status and the dashboard still work; identify answers 503
        log.warning("identify is off: %s", exc)
        weights = None
    log.info("serving %s on http://%s:%s/ (token %s)", config.home, web.host, web.port, "on" if web.token else "off")
    serve(config, weights, web.host, web.port)
    return 0


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    from fruits.reports.status import collect_status, format_status

    report = collect_status(Home.from_config(config))
    print(json.dumps(report, indent=2, default=str) if args.json else format_status(report))
    return 0


COMMANDS = {
    "stream": cmd_stream,
    "refit-pca": cmd_refit,
    "model": cmd_model,
    "drop": cmd_drop,
    "identify": cmd_identify,
    "stage": cmd_stage,
    "serve": cmd_serve,
    "status": cmd_status,
    "files": cmd_files,
    "retry": cmd_retry,
}


def configure_logging(level: str) -> None:
    """Log lines with time, level and logger to stderr; py4j's chatter only from WARNING."""
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)


# The exit code of each kind of error (fruits/errors.py): the one table of them, shown in the README's "Exit codes".
# A command that returns exits 0; argparse exits 2 for a command line it cannot parse, as for any refused input.
EXIT_CODES: dict[type[FruitsError], int] = {
    Stopped: 0,  # a stop asked for by a signal is a clean end
    Failed: 1,
    Refused: 2,
    Unavailable: 2,
    Busy: 3,
    FruitsError: 1,  # an error of the family outside the kinds is a failure too
}


# Not an error of the family: what read the output closed it first (README, "Exit codes").
OUTPUT_CLOSED = 128 + signal.SIGPIPE


def exit_code(error: type[FruitsError]) -> int:
    """The exit code of an ``error`` class: that of the nearest of its classes in :data:`EXIT_CODES`."""
    return next(EXIT_CODES[kind] for kind in error.__mro__ if kind in EXIT_CODES)


def stdout_is_gone() -> bool:
    """True if what reads this process's standard output has closed it: its write end then polls as an error."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll on this system, or no file descriptor behind stdout
        return False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = config_from_args(args)
        code = COMMANDS[args.command](config, args)
        if sys.stdout is not None:  # None: started with its output closed (`>&-`); print() then writes nothing
            sys.stdout.flush()  # here, not at the interpreter's exit: a reader that left is met by the handler below
        return code
    except BrokenPipeError:
        if not stdout_is_gone():
            raise  # a socket's, not the reader of our output's: an error like any other
        # `fruits files | head`: the reader has what it wanted. Stop quietly with the code a Unix tool killed by
        # SIGPIPE has (Python ignores the signal: a socket's broken pipe must stay an error, not end the process).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is still buffered goes nowhere
        return OUTPUT_CLOSED
    except FruitsError as exc:
        code = exit_code(type(exc))
        if code:
            print(f"fruits {args.command}: error: {exc}", file=sys.stderr)
        else:
            log.info("%s", exc)
        return code


if __name__ == "__main__":
    sys.exit(main())
