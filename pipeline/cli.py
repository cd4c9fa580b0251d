"""``taskpack`` command line: the composition root that wires pipeline, search and compilers.

Exit codes: 0 ok, 2 bad input (one line, no traceback), 1 runtime failure, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from pipeline.errors import InputError, TaskpackError, did_you_mean

log = logging.getLogger("taskpack")
EXPORTS_DIR = Path("mlruns/exports")  # `taskpack export --out` default


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad usage already; keep its message to one line plus usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        choice = re.match(r"argument .*: invalid choice: '(.*)' \(choose from (.*)\)$", message)
        if choice:  # e.g. `taskpack exprot`: suggest the closest command
            message += did_you_mean(choice[1], re.findall(r"'?([^',\s]+)'?", choice[2]))
        raise InputError(f"{self.prog}: {message}")


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", type=Path, help="recipe YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.epochs=1 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="taskpack", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("validate", help="check a recipe and print what it would run")
    _add_recipe_args(p)

    p = sub.add_parser("run", help="run a recipe: learn every task, track it in MLflow")
    _add_recipe_args(p)
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--fresh", action="store_true",
                   help="start over instead of continuing after the last committed task")

    p = sub.add_parser("search", help="join a running search as an extra worker")
    _add_recipe_args(p)
    p.add_argument("--task", type=int, required=True, help="the task being searched")
    p.add_argument("--worker", action="store_true", required=True,
                   help="add trials to the task's study (the run selects and commits)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage shared by the workers, e.g. postgresql://... "
                        "(default: the recipe's search.storage, else the run's journal file)")
    p.add_argument("--no-track", action="store_true",
                   help="do not log this worker's trials to MLflow")

    p = sub.add_parser("inspect", help="print what a packed store holds, per task and layer")
    p.add_argument("store", type=Path, help="store file (.tpk)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("export", help="compile committed tasks into per-device bundles")
    p.add_argument("store", type=Path, help="store file (.tpk)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--task", type=int, action="append", help="task id (repeatable)")
    g.add_argument("--all-tasks", action="store_true", help="every committed task")
    p.add_argument("--target", required=True, help="a target of the recipe, or host / aarch64")
    p.add_argument("--recipe", type=Path, default=None,
                   help="the run's recipe (default: the spec the store carries, else "
                        "recipe.yaml beside the store)")
    p.add_argument("--batch", type=int, action="append", default=None, metavar="B",
                   help="a batch size for the TVM libraries, one library each (repeatable; "
                        "default: 1 and 8); the ONNX model takes any batch")
    p.add_argument("--no-track", action="store_true",
                   help="do not log the bundles to MLflow (default: logged to the task's run "
                        "and registered as an MLflow model when the recipe tracks)")
    p.add_argument("--out", type=Path, default=EXPORTS_DIR,
                   help="folder for the bundles, one per target and task (default: %(default)s)")

    p = sub.add_parser("dashboard", help="open optuna-dashboard on the run's search studies",
                       epilog="example: taskpack dashboard recipes/quickstart.yaml --task 1")
    _add_recipe_args(p)
    p.add_argument("--task", type=int, default=None,
                   help="the task whose study to show, with the default journal storage "
                        "(default: the latest; an RDB search.storage shows every task)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080,
                   help="port to serve on; 0 picks a free one (default: %(default)s)")

    p = sub.add_parser("data", help="data sets")
    dsub = p.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    f = dsub.add_parser("fetch", help="fetch a data set into the cache (no network at run time)")
    f.add_argument("name", choices=["mnist", "fashion-mnist"])
    f.add_argument("--cache-dir", type=Path, default=None,
                   help="data cache (default: $TASKPACK_DATA, else ~/.cache/taskpack/data)")

    p = sub.add_parser("schema", help="write the recipe JSON schema")
    p.add_argument("--out", type=Path, default=Path("recipes/schema.json"),
                   help="where to write it (default: %(default)s)")
    return parser


def _version() -> str:
    """``taskpack <version>`` with the versions that decide what a run computes."""
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return (f"taskpack {v('taskpack')} (torch {v('torch')}, apache-tvm {v('apache-tvm')}, "
            f"optuna {v('optuna')}, mlflow {v('mlflow')}, Python {sys.version.split()[0]})")


def cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.recipe import load_recipe

    r = load_recipe(args.recipe, args.overrides)
    if r.search.enabled:  # the search's own checks (registered objectives, target)
        from search import SearchCompressor

        SearchCompressor.check(r)
    print(f"ok: {r.name}: stream {r.benchmark.stream} ({r.benchmark.tasks or 'all'} tasks), "
          f"model {r.model.arch}, method {r.method.kind}, targets "
          f"{', '.join(t.name for t in r.targets)}")
    return 0


def where_line(recipe, tracking: bool = True) -> str:  # noqa: ANN001
    """The line a run starts with: where its outputs, the tuning cache and exports go."""
    from pipeline.runner import run_dir_for

    parts = [f"outputs: {run_dir_for(recipe)}", f"tuning cache: {recipe.tuning_dir}",
             f"exports: {EXPORTS_DIR} (taskpack export)"]
    if tracking and recipe.tracking.enabled:
        parts.append(f"MLflow: {recipe.tracking.uri}")
    return "; ".join(parts)


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pipeline.progress import Bars
    from pipeline.recipe import load_recipe
    from pipeline.report import search_table, summary_table
    from pipeline.runner import run_recipe
    from pipeline.tracking import NoopTracker, build_tracker

    recipe = load_recipe(args.recipe, args.overrides)
    tracker = NoopTracker() if args.no_track else build_tracker(recipe.tracking)
    print(where_line(recipe, tracking=not args.no_track), flush=True)  # stderr: errors only
    compressor = None  # the runner's default: the recipe's plan through the method's passes
    if recipe.search.enabled:
        from search import SearchCompressor

        compressor = SearchCompressor(recipe)
        if args.fresh:  # an RDB outlives the run folder: its studies start over too
            for name in compressor.forget_studies():
                log.info("deleted study %s", name)
    with Bars() as bars:
        result = run_recipe(recipe, tracker, bars, fresh=args.fresh, compressor=compressor)
    out = Console()
    out.print(summary_table(result))
    if any("search_chosen_trial" in r.compression for r in result.tasks):
        out.print(search_table(result))
    if result.resumed_from:
        out.print(f"continued after {result.resumed_from} committed task(s)")
    out.print(f"run folder: {result.run_dir}")
    out.print(f"report: {result.run_dir / 'report.html'}  (one page: matrix, store, fronts)")
    out.print(f"store: {result.store_path}  (taskpack inspect {result.store_path})")
    if result.where:
        out.print(f"MLflow run {result.run_id}: {result.where}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from pipeline.progress import Bars
    from pipeline.recipe import load_recipe
    from pipeline.tracking import NoopTracker, build_tracker
    from search import run_worker

    overrides = list(args.overrides) + ([f"search.storage={args.storage}"] if args.storage
                                        else [])
    recipe = load_recipe(args.recipe, overrides)
    if not recipe.search.enabled:
        raise InputError(f"{args.recipe}: search.enabled is false; nothing to work on")
    tracker = NoopTracker() if args.no_track else build_tracker(recipe.tracking)
    with Bars() as bars:
        run_worker(recipe, args.task, tracker=tracker, bars=bars)
    print(f"worker done: task {args.task} of {recipe.name}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.errors import StoreError
    from pipeline.store import PackedStore, format_report

    if not args.store.is_file():
        raise StoreError(f"{args.store}: no such store file")
    print(format_report(PackedStore.open(args.store).report(), as_json=args.json))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.errors import StoreError
    from pipeline.export import DEFAULT_BATCH_SIZES, describe_bundle, export_tasks

    if not args.store.is_file():
        raise StoreError(f"{args.store}: no such store file")
    folders = export_tasks(args.store, None if args.all_tasks else args.task, args.target,
                           args.recipe, args.out, args.batch or DEFAULT_BATCH_SIZES)
    for folder in folders:
        line, warning = describe_bundle(folder)
        print(line)
        if warning:
            print(warning, file=sys.stderr)
    if not args.no_track:
        from pipeline.store_spec import resolve_spec
        from pipeline.tracking.exports import track_exports

        for line in track_exports(resolve_spec(args.store, args.recipe).recipe, folders):
            print(line)
    if (args.store.parent / "results.json").is_file():  # a run folder: link the bundles
        from pipeline.run_report import write_report

        print(f"report: {write_report(args.store.parent, [args.out])}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    import time

    from pipeline.recipe import load_recipe
    from pipeline.runner import run_dir_for
    from search._dashboard import dashboard_storage, serving

    recipe = load_recipe(args.recipe, args.overrides)
    found = dashboard_storage(recipe, run_dir_for(recipe), args.task)
    with serving(found.storage, args.host, args.port) as server:
        print(f"optuna-dashboard on {found.where}: http://{args.host}:{server.server_port}/ "
              "(Ctrl-C stops it)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("dashboard stopped")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from pipeline.data import fetch

    path = fetch(args.name, args.cache_dir)
    print(f"{args.name}: {path}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from pipeline.recipe import recipe_json_schema

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(recipe_json_schema())
    print(f"wrote {args.out}")
    return 0


COMMANDS = {"validate": cmd_validate, "run": cmd_run, "search": cmd_search,
            "inspect": cmd_inspect,
            "export": cmd_export, "dashboard": cmd_dashboard, "data": cmd_data,
            "schema": cmd_schema}


def _setup_logging(verbose: bool) -> None:
    """Log lines through the console the progress bars use (printed above live bars)."""
    from pipeline.progress import ConsoleHandler

    handler = ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    # a no-op where the root logger has handlers already (pytest's capture, an embedding app)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    _setup_logging(args.verbose)
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "tvm", "compilers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except TaskpackError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`taskpack inspect ... | head`): stop quietly, as a shell
        # tool killed by SIGPIPE would, and keep the interpreter's final flush from failing
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13  # SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
