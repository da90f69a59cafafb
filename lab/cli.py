"""``lab``: run, resume, list and plot experiments.

Exit status: 0 done; 2 bad input, one line on stderr (no traceback), before
anything is trained or overwritten; 3 the loss turned NaN/inf (the last
checkpoint is kept; the line says how to go on with a smaller learning rate);
75 stopped by SIGTERM/SIGINT/SIGUSR1 with a checkpoint written (the line says
how to resume).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from plasticity_lab.registry import ConfigError

EXIT_BAD_INPUT = 2


def entry() -> None:
    """The ``lab`` command (and ``python -m plasticity_lab.lab``): a process of its own,
    with its own W&B service. A W&B service inherited from a parent process
    (``WANDB_SERVICE``) would hold the runs of every lab process it served, so a
    killed run's id would stay "in use" there and its resume could not reopen it."""
    os.environ.pop("WANDB_SERVICE", None)
    raise SystemExit(main())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="lab", description="plasticity-lab: continual-learning and loss-of-plasticity experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="train; Hydra overrides key=value, --multirun to sweep")
    p_run.add_argument("--multirun", "-m", action="store_true", help="sweep comma-separated values (Hydra launcher)")
    p_run.add_argument("overrides", nargs="*", help="e.g. experiment=split_mnist seed=3 agent.optimizer.lr=0.01")
    p_run.add_argument("--cfg", choices=("job", "sbatch"), help="print the composed config (job, as Hydra's --cfg "
                       "job), or the sbatch script a SLURM sweep would submit (sbatch), and exit")
    p_run.add_argument("--config-dir", "-cd", help="a folder of your own configs (experiment/*.yaml presets, or a "
                       "primary config); the lab's configs stay on the search path")
    p_run.add_argument("--config-name", "-cn", default="config", help="the primary config's name (default: config)")
    p_rerun = sub.add_parser("rerun", help="run a saved run's config.yaml again, exactly, into a new directory")
    p_rerun.add_argument("run_dir")
    p_rerun.add_argument("overrides", nargs="*", help="key=value changes (e.g. seed=4 out_dir=runs/again)")
    p_rerun.add_argument("--trust-plugins", action="store_true",
                         help="import the plug-in modules the run's config.yaml names (they run code)")
    p_res = sub.add_parser("resume", help="continue a stopped or killed run (or every job of a sweep) from its checkpoint")
    p_res.add_argument("out_dir")
    p_res.add_argument("overrides", nargs="*", help="key=value changes applied on purpose, e.g. agent.optimizer.lr=0.01")
    p_res.add_argument("--trust-plugins", action="store_true",
                       help="import the plug-in modules the run's config.yaml names (they run code)")
    p_status = sub.add_parser("status", help="each job of a sweep (or a run): finished, running, stopped at task k, "
                              "failed with its error line, not started")
    p_status.add_argument("dirs", nargs="+", help="sweep or run directories")
    p_sync = sub.add_parser("sync", help="rebuild a run's offline W&B history from metrics.jsonl (and upload it)")
    p_sync.add_argument("run_dirs", nargs="+")
    p_sync.add_argument("--upload", action="store_true", help="then `wandb sync` it (needs a login and network)")
    p_list = sub.add_parser("list", help="every registered name with its parameters")
    p_list.add_argument("--json", action="store_true")
    p_list.add_argument("--markdown", action="store_true", help="the metric table (as in the README)")
    p_plot = sub.add_parser("plot", help="plots of run directories (a folder of runs compares them)")
    p_plot.add_argument("run_dirs", nargs="+")
    p_plot.add_argument("--out", help="where comparison figures go (default: plots/ here)")
    p_cmp = sub.add_parser("compare", help="table of runs grouped by method: mean ± s.e. over seeds")
    p_cmp.add_argument("run_dirs", nargs="+")
    p_cmp.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    p_dash = sub.add_parser("dashboard", help="create the ready W&B workspace (or print its spec with --dry-run)")
    p_dash.add_argument("--project", required=True)
    p_dash.add_argument("--entity", help="W&B entity (user or team); default: your login's")
    p_dash.add_argument("--dry-run", action="store_true", help="print the workspace spec as JSON, send nothing")
    p_dash.add_argument("run_dirs", nargs="*", help="runs whose metrics (plug-ins' too) get panels as well")
    p_data = sub.add_parser("data", help="download a data set (mnist, fashion_mnist, cifar100) or prepare ImageNet32")
    data_sub = p_data.add_subparsers(dest="dataset", required=True)
    for name, what in (("mnist", "MNIST (permuted_mnist, split_mnist)"), ("fashion_mnist", "Fashion-MNIST (as MNIST)"),
                       ("cifar100", "CIFAR-100 (cifar100_incremental)")):
        p_dl = data_sub.add_parser(name, help=f"download {what}, checksums verified")
        p_dl.add_argument("--out", required=True, help="output folder; then run with data.root=OUT")
        p_dl.add_argument("--mirror", help="a URL serving the same files (default: torchvision's addresses)")
    p_in32 = data_sub.add_parser("imagenet32", help="Imagenet32_train/val batch files -> per-class arrays (continual_imagenet)")
    p_in32.add_argument("--src", required=True, help="folder where Imagenet32_train.zip and Imagenet32_val.zip were extracted")
    p_in32.add_argument("--out", required=True, help="output folder; then run with data.root=OUT")
    p_in32.add_argument("--num-classes", type=int, default=1000, help="classes expected (1000 for the published files)")
    p_in32.add_argument("--train-batches", type=int, default=10, help="train_data_batch_1..N expected (10 published)")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            from plasticity_lab.lab.config import ConfigSource

            source = ConfigSource(args.config_dir, args.config_name)
            if args.cfg == "sbatch":
                return _sbatch(args.overrides, source)
            if args.multirun:
                return _multirun(args.overrides, source=source)
            return _run(args.overrides, source, print_only=args.cfg == "job")
        if args.command == "rerun":
            return _rerun(Path(args.run_dir), args.overrides, args.trust_plugins)
        if args.command == "resume":
            return _resume(Path(args.out_dir), args.overrides, args.trust_plugins)
        if args.command == "status":
            return _status([Path(d) for d in args.dirs])
        if args.command == "sync":
            return _sync([Path(d) for d in args.run_dirs], args.upload)
        if args.command == "list":
            return _list(args.json, args.markdown)
        if args.command == "plot":
            return _plot([Path(d) for d in args.run_dirs], args.out)
        if args.command == "dashboard":
            return _dashboard(args.project, args.entity, args.dry_run, [Path(d) for d in args.run_dirs])
        if args.command == "data":
            return _data(args)
        if args.command == "compare":
            return _compare([Path(d) for d in args.run_dirs], args.format)
    except ConfigError as err:
        print(f"lab: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # `lab list | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _data(args: argparse.Namespace) -> int:
    if args.dataset != "imagenet32":
        from plasticity_lab.streams.download import fetch, sources

        out = fetch(sources()[args.dataset], args.out, args.mirror, progress=lambda line: print(line, flush=True))
        stream = {"cifar100": "cifar100_incremental"}.get(args.dataset, "permuted_mnist")
        print(f"ready: {out}; run with: lab run experiment={stream} data.root={out}")
        return 0
    from plasticity_lab.streams.imagenet32 import convert

    meta = convert(args.src, args.out, num_classes=args.num_classes, train_batches=args.train_batches,
                   progress=lambda line: print(line, flush=True))
    train = meta["counts"]["train"]
    print(f"ready: {len(train)} classes, {min(train)}-{max(train)} training images per class; "
          f"run with: lab run experiment=continual_imagenet data.root={args.out}")
    return 0


def _train(cfg: Any, out_dir: Any = None, resume: bool = False, requested: list[str] | tuple[str, ...] = (),
           brief: bool = False) -> int:
    """One run, or with ``seeds=[...]`` every seed vectorised in this process
    (lab/seeds.py); ``brief``: one result line per run (a sweep's jobs), not the table."""
    from plasticity_lab.lab.loop import EXIT_NONFINITE, run
    from plasticity_lab.lab.runner import NonFiniteLoss
    from plasticity_lab.lab.stop import Stopped

    try:
        summaries = run(cfg, out_dir, resume=resume, requested=requested)
    except NonFiniteLoss as err:
        print(f"lab: error: {err}", file=sys.stderr)
        return EXIT_NONFINITE
    except Stopped as stopped:
        print(f"lab: {stopped}", file=sys.stderr)
        return stopped.status
    if brief:
        for s in summaries:
            print(_one_line(s), flush=True)
    elif len(summaries) == 1:
        _print_summary(summaries[0])
    else:
        _print_seeds(summaries)
    return 0


def _one_line(s: dict[str, Any]) -> str:
    """A finished run in one line: where, its final scores and speed."""
    if s.get("target") == "value":
        score = f"online squared error (last task) {s['online_loss'][-1]:.4f}"
    else:
        score = f"average accuracy {s['avg_accuracy']:.4f}, online accuracy (last task) {s['online_accuracy'][-1]:.4f}"
    return f"{s['out_dir']}: finished; {score}; {s['examples_per_s']:.0f} ex/s"


def _print_seeds(summaries: list[dict[str, Any]]) -> None:
    from plasticity_lab.lab.compare import group_runs, load_runs, render, table

    dirs = [Path(s["out_dir"]) for s in summaries]
    print(render(*table(group_runs(load_runs(dirs)))))
    print(f"output: {dirs[0].parent}/seed_<s> ({len(dirs)} runs, trained together); "
          f"plots: lab plot {dirs[0].parent} --out {dirs[0].parent / 'plots'}")


def _run(overrides: list[str], source: Any, print_only: bool = False) -> int:
    from omegaconf import OmegaConf

    from plasticity_lab.lab.config import compose_config

    cfg = compose_config(overrides, source)
    if print_only:
        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    return _train(cfg)


def _sbatch(overrides: list[str], source: Any) -> int:
    """The sbatch script of the sweep ``overrides`` describe (nothing is submitted)."""
    from plasticity_lab.lab.cluster import sbatch_script
    from plasticity_lab.lab.config import compose_hydra
    from plasticity_lab.lab.sweep import grid_size

    if not any(o.startswith("hydra.sweep.dir=") for o in overrides):
        overrides = [*overrides, f"hydra.sweep.dir=runs/multirun/{datetime.now().strftime('%Y%m%d-%H%M%S')}"]
    hydra = compose_hydra(_first_values(overrides)[0], source)
    if "n_trials" in hydra.sweeper:  # a tuner submits its trials in arrays of n_jobs
        jobs = int(hydra.sweeper.n_jobs)
        print(f"lab: a tuning sweeper submits {hydra.sweeper.n_trials} trials as arrays of hydra.sweeper.n_jobs={jobs}",
              file=sys.stderr)
    else:
        jobs = grid_size(overrides)
    print(sbatch_script(hydra.launcher, jobs), end="")
    return 0


def _saved_config(run_dir: Path, command: str, trust_plugins: bool) -> Any:
    """A run's config.yaml, with the plug-in modules it names imported only
    when the user trusts them (importing runs their code)."""
    from omegaconf import OmegaConf

    from plasticity_lab.lab.rundir import CONFIG
    from plasticity_lab.registry import load_plugins

    saved = OmegaConf.load(run_dir / CONFIG)
    plugins = list(saved.get("plugins") or [])
    if plugins and not trust_plugins:
        raise ConfigError("plugins", plugins, f"modules you trust: {run_dir / CONFIG} names plug-ins that run code "
                          f"when imported; {command} with: lab {command} {run_dir} --trust-plugins")
    load_plugins(plugins)
    return saved


def _rerun(run_dir: Path, overrides: list[str], trust_plugins: bool) -> int:
    """The saved run's resolved config.yaml, trained again from the start into
    a new directory (``out_dir=...`` to choose it), with ``overrides`` applied."""
    from plasticity_lab.lab.config import override_saved
    from plasticity_lab.lab.rundir import CONFIG

    if not (run_dir / CONFIG).is_file():
        raise ConfigError("run_dir", str(run_dir), "a run directory holding config.yaml (written by `lab run`)")
    saved = _saved_config(run_dir, "rerun", trust_plugins)
    cfg = override_saved(saved, overrides, str(run_dir / CONFIG))
    if not any(o.startswith("out_dir=") for o in overrides):
        cfg.out_dir = None  # a new directory: the saved run stays as it is
    return _train(cfg)


def _resume(out: Path, overrides: list[str], trust_plugins: bool) -> int:
    """Continue the run (or group, or sweep) in ``out`` from its checkpoint,
    with ``overrides`` applied on purpose (lab/resume.py says which may change)."""
    from plasticity_lab.lab.resume import with_overrides
    from plasticity_lab.lab.rundir import CONFIG, is_finished
    from plasticity_lab.lab.sweep import SWEEP_FILE, is_sweep

    if is_sweep(out):
        return _resume_sweep(out, overrides, trust_plugins)
    if not (out / CONFIG).is_file():
        raise ConfigError("out_dir", str(out), "a run directory holding config.yaml (written by `lab run`), "
                          f"or a sweep directory holding {SWEEP_FILE}")
    saved = _saved_config(out, "resume", trust_plugins)
    cfg, requested = with_overrides(saved, overrides)
    extends = cfg.stream.num_tasks != saved.stream.num_tasks
    if is_finished(out) and not extends:
        print(f"{out} already finished; nothing to resume (a larger stream.num_tasks=N extends it)")
        return 0
    return _train(cfg, out, resume=True, requested=requested)


def _resume_sweep(sweep: Path, overrides: list[str], trust_plugins: bool) -> int:
    """Every job of a Hydra sweep: the unfinished ones resume, the ones that
    never began start, the finished ones are left alone (the sweep's own
    overrides and job numbers, relaunched into the same directory)."""
    from omegaconf import OmegaConf

    if overrides:
        raise ConfigError("overrides", overrides, "none for a sweep directory (resume its jobs one by one to change them)")
    from plasticity_lab.lab.config import ConfigSource

    from plasticity_lab.lab.sweep import SWEEP_FILE

    hydra_cfg = OmegaConf.load(sweep / SWEEP_FILE).hydra
    if "n_trials" in hydra_cfg.sweeper:
        raise ConfigError("out_dir", str(sweep), "a grid sweep: a tuning sweeper's study lives in its process, and a "
                          "relaunch would ask it for new trials; resume its trials one by one (lab resume "
                          f"{sweep}/<trial>), or start a new study")
    # the sweep's own overrides and its launcher's (hydra/launcher=slurm, hydra.launcher.partition=...), as
    # written (unresolved: they hold ${hydra.job.num}); folder naming, sweep dir and search path are given anew below
    written = OmegaConf.to_container(hydra_cfg.overrides, resolve=False)
    task = [*written["task"], *(o for o in written["hydra"] if not o.startswith(REGENERATED))]
    if any(o.partition("=")[0].lstrip("+") == "plugins" for o in task) and not trust_plugins:
        raise ConfigError("plugins", task, f"modules you trust: the sweep names plug-ins that run code when imported; "
                          f"resume with: lab resume {sweep} --trust-plugins")
    # the sweep's own job-folder naming and config source, as it was launched (a sweep of an earlier
    # version named its folders by job number)
    sweep_node = OmegaConf.to_container(hydra_cfg.sweep, resolve=False)
    exclude = OmegaConf.to_container(hydra_cfg.job.config.override_dirname, resolve=False).get("exclude_keys") or []
    naming = [f"hydra.sweep.subdir={sweep_node['subdir']}",
              f"hydra.job.config.override_dirname.exclude_keys=[{','.join(exclude)}]"]
    launched = json.loads((sweep / SOURCE_FILE).read_text()) if (sweep / SOURCE_FILE).is_file() else {}
    source = ConfigSource(launched.get("directory"), launched.get("name", "config"))
    task = [o for o in task if not o.startswith("hydra.searchpath=")]
    return _multirun(task, sweep_dir=sweep, source=source, naming=naming)


def _status(dirs: list[Path]) -> int:
    """Each sweep's jobs (lab/sweep.py ``report``) and a tuning sweep's best
    trial; each run's (or each seed's) state in one line."""
    import yaml

    from plasticity_lab.lab.rundir import CONFIG, status
    from plasticity_lab.lab.sweep import BEST_FILE, is_sweep, jobs, report

    for d in dirs:
        if is_sweep(d):
            print(report(d, jobs(d)))
            if (d / BEST_FILE).is_file():  # a tuning sweep: its best trial
                best = yaml.safe_load((d / BEST_FILE).read_text()) or {}
                params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in (best.get("best_params") or {}).items())
                print(f"best trial: {best.get('best_value')} with {params} ({d / BEST_FILE})")
        elif (d / CONFIG).is_file():
            seeds = sorted(d.glob("seed_*"))
            for run in seeds or [d]:
                print(f"{run}: {status(run)}")
        else:
            raise ConfigError("dir", str(d), "a sweep directory (holding multirun.yaml) or a run directory "
                              "(holding config.yaml)")
    return 0


def _sync(dirs: list[Path], upload: bool) -> int:
    """Each run's offline W&B run rebuilt from its metrics.jsonl (every record
    exactly once), then uploaded with ``wandb sync`` when asked."""
    import subprocess

    from plasticity_lab.lab.wandb_sink import rebuild_run

    runs = [r for d in dirs for r in ([d] if (d / "metrics.jsonl").is_file() else sorted(d.glob("seed_*")))]
    if not runs:
        raise ConfigError("run_dir", [str(d) for d in dirs], "a run directory holding metrics.jsonl (or a group of seed_* runs)")
    for d in runs:
        hint = rebuild_run(d)
        print(hint)
        if upload:
            done = subprocess.run(hint.split(), capture_output=True, text=True)
            if done.returncode:
                raise ConfigError("wandb sync", str(d), f"an upload W&B accepts ({(done.stderr or done.stdout).strip()[:200]})")
    return 0


REGENERATED = ("hydra.sweep.", "hydra.job.config.override_dirname.", "hydra.searchpath=", "hydra/job_logging=",
               "hydra/hydra_logging=", "hydra.mode=")
"""Hydra overrides a sweep's launch adds itself: a resumed sweep does not replay them."""

SOURCE_FILE = "lab_config_source.json"
"""In a sweep directory: the --config-dir and --config-name it was launched with (for lab resume)."""


def _multirun(overrides: list[str], sweep_dir: Path | None = None, source: Any = None,
              naming: list[str] | None = None) -> int:
    """Sweep with Hydra's multirun (its launcher spreads the jobs); each job is
    a normal run in ``runs/multirun/<time>/<swept values>`` (or ``sweep_dir``,
    where a finished job is left as it is and an unfinished one resumes). A
    job that fails is recorded in its folder and the others go on; the sweep
    then lists every job and exits with the first failure's status."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from plasticity_lab.lab.config import ConfigSource, compose_config, compose_hydra, strategy_choice

    source = source or ConfigSource()
    overrides = [strategy_choice(o) for o in overrides]
    for combo in _first_values(overrides):
        compose_config(combo, source)  # every name and value valid before any job starts
    from plasticity_lab.lab.group import claim_dir
    from plasticity_lab.lab.rundir import is_finished
    from plasticity_lab.lab.stop import EXIT_STOPPED
    from plasticity_lab.lab.sweep import is_sweep, job_subdir, jobs, objective, record_launch, report

    asked = [o.partition("=")[2] for o in overrides if o.startswith("hydra.sweep.dir=")]
    overrides = [o for o in overrides if not o.startswith("hydra.sweep.dir=")]
    if sweep_dir is None and asked:
        sweep_dir = Path(asked[-1])
    sweep_dir = sweep_dir or claim_dir(Path("runs") / "multirun" / datetime.now().strftime("%Y%m%d-%H%M%S"))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    directory = str(Path(source.directory).expanduser().resolve()) if source.directory else None
    (sweep_dir / SOURCE_FILE).write_text(json.dumps({"directory": directory, "name": source.name}))
    stopped: list[int] = []  # a signal stops the sweep, not only its running job

    @hydra.main(config_path=source.path(), config_name=source.name, version_base=None)
    def job(cfg: Any) -> float | None:
        """One sweep point (in this process, or in a submitit job); returns
        its objective to the sweeper (lab/sweep.py ``objective``)."""
        out = Path(HydraConfig.get().runtime.output_dir)
        if is_finished(out):
            print(f"{out}: finished; left as it is")
        elif not stopped and (code := _sweep_job(cfg, out)) in (EXIT_STOPPED, 130):
            stopped.append(code)
        return objective(out)

    launch = [*source.overrides(), *overrides, f"hydra.sweep.dir={sweep_dir}", *(naming or job_subdir(overrides))]
    if not is_sweep(sweep_dir):  # Hydra's basic sweeper writes its own; a tuning sweeper writes none
        record_launch(sweep_dir, compose_hydra(_first_values(launch)[0], source), launch)
    saved = sys.argv
    sys.argv = ["lab", "--multirun", *launch, "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    try:
        job()
    except Exception as err:  # the sweeper's own end (e.g. Optuna with no trial finished): the jobs tell the rest
        print(f"lab: error: the sweeper stopped: {type(err).__name__}: {err}".splitlines()[0], file=sys.stderr)
    finally:
        sys.argv = saved
    done = jobs(sweep_dir)
    print(report(sweep_dir, done))
    failed = [j.exit_status for j in done if j.failed]
    # jobs in other processes (submitit) are stopped or not as their folders say
    halted = stopped or [EXIT_STOPPED for j in done if j.status.startswith("stopped")]
    return failed[0] if failed else (halted[0] if halted else 0)


def _sweep_job(cfg: Any, out: Path) -> int:
    """One job of a sweep: its exit status; a failure is recorded in its
    folder (failed.json, and error.log for a crash) instead of ending the sweep."""
    import traceback

    from plasticity_lab.lab.rundir import LockHeld, mark_failed
    from plasticity_lab.registry import load_plugins

    try:
        load_plugins(list(cfg.get("plugins") or []))  # a job in a process of its own (submitit) imports them anew
        return _train(cfg, out, brief=True)
    except LockHeld as err:  # another process runs this job now: its run, not a failure of it
        print(f"lab: error: {out}: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ConfigError as err:
        print(f"lab: error: {out}: {err}", file=sys.stderr)
        mark_failed(out, EXIT_BAD_INPUT, str(err))
        return EXIT_BAD_INPUT
    except Exception as err:  # a crash: the traceback for the bug report, the sweep goes on
        trace = traceback.format_exc()
        print(trace, file=sys.stderr)
        mark_failed(out, 1, f"{type(err).__name__}: {err}".splitlines()[0] + f" (traceback: {out / 'error.log'})")
        (out / "error.log").write_text(trace)
        return 1


def _first_values(overrides: list[str]) -> list[list[str]]:
    """One override list per swept value (the other sweeps at their first
    value), parsed by Hydra's own override grammar, so every value is
    validated before any job starts."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    values = [[str(o.value().start)] if o.is_interval_sweep()  # a tuner samples it: its lower end stands for it
              else list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.input_line] for o in parsed]
    firsts = [_as_override(o, v[0]) for o, v in zip(parsed, values)]
    combos = [firsts]
    for i, (o, vs) in enumerate(zip(parsed, values)):
        combos += [[*firsts[:i], _as_override(o, v), *firsts[i + 1:]] for v in vs[1:]]
    return combos


def _as_override(o, value: str) -> str:
    return value if not o.is_sweep_override() else f"{o.get_key_element()}={value}"


def _list(as_json: bool, markdown: bool) -> int:
    """Every registered name with its parameters (``--json``); ``--markdown``: the metric table."""
    from plasticity_lab.agents import activations, interventions, networks
    from plasticity_lab.agents.init import inits
    from plasticity_lab.agents.optimizers import optimizer_names
    from plasticity_lab.lab.avalanche_bridge.strategies import STRATEGIES
    from plasticity_lab.lab.config import config_dir
    from plasticity_lab.metrics.catalog import markdown_table, metrics, record_name, when_text
    from plasticity_lab.metrics.tracker import Tracker
    from plasticity_lab.registry import params_of
    from plasticity_lab.streams import stream_builders

    if markdown:
        print(markdown_table())
        return 0
    table = {
        "experiments": {p.stem: {} for p in sorted(Path(config_dir(), "experiment").glob("*.yaml"))},
        "streams": {n: stream_builders.params(n) for n in stream_builders.names()},
        "networks": {n: {} for n in networks.names()},
        "inits": {n: {"default gain": inits.facts(n).gain} for n in inits.names()},
        "activations": {n: activations.params(n) for n in activations.names()},
        "interventions": {n: interventions.params(n) for n in interventions.names()},
        "optimizers": {n: {} for n in optimizer_names()},
        "avalanche_strategies": {n: params for n, (_, params) in STRATEGIES.items()},
        "tracker": {"metrics": params_of(Tracker)},  # its parameters are the metrics.* config keys
        "sinks": {"jsonl": {}, "wandb": {"mode": "auto|online|offline"}},
    }
    facts = {
        "activations": {n: {"exact zeros": activations.facts(n).exact_zeros,
                            "fused path": activations.facts(n).derivative is not None,
                            "compiled step": activations.facts(n).kernel is not None} for n in activations.names()},
        "metrics": {record_name(n, metrics.facts(n)): {"unit": metrics.facts(n).unit, "when": when_text(metrics.facts(n))}
                    for n in metrics.names()},
    }
    if as_json:
        print(json.dumps({**table, "activation_facts": facts["activations"], "metrics": facts["metrics"]}, indent=1,
                         default=str))
        return 0
    for kind, entries in [*table.items(), ("metrics", facts["metrics"])]:
        print(f"{kind}:")
        for name, params in entries.items():
            ps = ", ".join(f"{k}={v!r}" for k, v in params.items())
            flags = [k for k, v in facts.get(kind, {}).get(name, {}).items() if v is True]
            print(f"  {name}" + (f"  ({ps})" if ps else "") + (f"  [{', '.join(flags)}]" if flags else ""))
    return 0


def _plot(dirs: list[Path], out: str | None) -> int:
    """One run: redraw its own plots. Several: comparison figures in ``out``."""
    from plasticity_lab.lab.compare import group_runs, load_runs
    from plasticity_lab.lab.plots import plot_groups, plot_run

    runs = load_runs(dirs)
    if len(runs) == 1:
        paths = plot_run(runs[0].path, runs[0].summary)
    else:
        paths = plot_groups(group_runs(runs), Path(out or "plots"))
    for path in paths:
        print(path)
    return 0


def _dashboard(project: str, entity: str | None, dry_run: bool, run_dirs: list[Path]) -> int:
    from plasticity_lab.lab.compare import declared_metrics, load_runs
    from plasticity_lab.lab.dashboard import build_workspace, save_workspace, spec

    runs = load_runs(run_dirs) if run_dirs else []
    logged = {k for r in runs for line in (r.path / "metrics.jsonl").open() for k in json.loads(line)} if runs else None
    layout = spec(declared_metrics(runs) if runs else None, logged)
    if dry_run:
        build_workspace(project, entity or "your-entity", layout)  # the spec must make a valid workspace
        print(json.dumps({"project": project, "entity": entity, **layout}, indent=1))
        return 0
    try:
        if entity is None:
            import wandb

            entity = wandb.Api().default_entity
        print(save_workspace(project, entity, layout))
    except Exception as err:  # no login, no network, no such project: say so, nothing was changed
        raise ConfigError("dashboard", f"{entity}/{project}", f"a reachable W&B project with a login ({err}); "
                          "--dry-run prints the spec without W&B") from None
    return 0


def _compare(dirs: list[Path], fmt: str) -> int:
    from plasticity_lab.lab.compare import group_runs, load_runs, render, table

    left_out: list[tuple[Path, str]] = []
    runs = load_runs(dirs, left_out)
    print(render(*table(group_runs(runs), left_out), fmt))
    return 0


def _console() -> Any:
    """A rich console that wraps nothing when stdout is not a terminal (a
    cluster log keeps each path on one line)."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    return Console(soft_wrap=True, width=10_000)


def _print_summary(s: dict[str, Any]) -> None:
    from rich.table import Table

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    value = s.get("target") == "value"  # a regression stream: report its online squared error
    acc = s["online_loss" if value else "online_accuracy"]
    what = "online squared error" if value else "online accuracy"
    head = acc[: max(1, len(acc) // 10)]
    tail = acc[-max(1, len(acc) // 10):]
    table = Table(title=f"{s['experiment']} · {s['activation']} · seed {s['seed']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in [
        ("tasks trained", s["tasks_trained"]),
        (f"{what}, first {len(head)} tasks", sum(head) / len(head) if head else None),
        (f"{what}, last {len(tail)} tasks", sum(tail) / len(tail) if tail else None),
        ("average test accuracy (final)", s["avg_accuracy"]),
        ("backward transfer (BWT)", s["bwt"]),
        ("forgetting (Chaudhry)", s["forgetting"]),
        ("examples / s", f"{s['examples_per_s']:.0f}"),
        ("wall time (s)", f"{s['wall_time_s']:.1f}"),
    ]:
        table.add_row(name, fmt(value))
    console = _console()
    console.print(table)
    console.print(f"output: {s['out_dir']}")
    console.print("plots:  " + "  ".join(s["plots"]))
    if s.get("wandb_sync"):
        console.print(f"W&B ran offline (no login or no network); upload later with: {s['wandb_sync']}")
