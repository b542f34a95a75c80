"""Command line: ``python -m kdengine train|sweep|list|show|export|presets|methods|prune|resume|data|serve|class``.

The CLI drives the same Engine the web app uses, so what works here works there.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from kdengine import ConfigError, RunConfig, export_run, list_presets, preset_path


def _parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(item, "--set takes KEY=VALUE, e.g. method.params.T=4")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def load_config(path: str, sets: list[str] | None = None) -> RunConfig:
    cfg = RunConfig.load(str(preset_path(path)))
    overrides = _parse_sets(sets or [])
    return cfg.with_overrides(overrides) if overrides else cfg


def cmd_train(args) -> int:
    from kdengine import Metrics, Notice, lint
    from kdengine.core import progress
    cfg = load_config(args.config, args.set)
    for w in lint(cfg):
        print(f"warning: {w}", file=sys.stderr)
    eng = _engine()
    rid = eng.submit(cfg, owner="cli")
    print(f"run {rid}: {cfg.method.name} on {cfg.data.name}")

    def on_event(ev):          # runs on the engine's worker thread: print only, through the bar
        if isinstance(ev, Notice):
            progress.say(f"  {ev.message}")
        elif isinstance(ev, Metrics) and "test_acc" in ev.values:
            v = ev.values
            extra = f" agree {v['agreement']:.3f}" if "agreement" in v else ""
            progress.say(f"  epoch {ev.epoch:>5.0f}  test acc {v['test_acc']:.4f}  train acc "
                         f"{v['train_acc']:.4f}{extra}")
    eng.subscribe(rid, on_event)
    bars = PhaseBars()
    try:
        while eng.status(rid) in ("queued", "running", "paused"):
            bars.show(eng.snapshot(rid))
            time.sleep(0.2)
    except KeyboardInterrupt:
        eng.stop(rid)
        eng.wait(rid)
    s = eng.snapshot(rid)
    bars.close(done=s.status == "done", final=True)
    eng.shutdown()
    if s.status != "done":
        print(f"run {rid} {s.status}: {s.error}", file=sys.stderr)
        return 1
    _print_summary(s.summary)
    return 0


class PhaseBars:
    """One progress bar per long phase of a run (teacher, baseline, student), with its ETA."""
    PHASES = ("teacher", "baseline", "student")
    STEPS = 1000          # the engine reports fractions; the bar counts thousandths

    def __init__(self):
        self.phase, self.bar = None, None

    def show(self, snap) -> None:
        from kdengine.core import progress
        phase = snap.phase
        if phase not in self.PHASES:
            return
        if phase != self.phase:
            self.close(done=True)
            self.phase = phase
            self.bar = progress.bar(self.STEPS, f"{phase:>8}", counts=False)
        progress.set_fraction(self.bar, snap.progress if phase == "student"
                              else snap.phase_progress)

    def close(self, done: bool, final: bool = False) -> None:
        from kdengine.core import progress
        if final and done and self.phase != "student":
            # a short run can finish between two polls: its student phase still ran, to the end
            self.close(done=True)
            self.phase, self.bar = "student", progress.bar(self.STEPS, f"{'student':>8}",
                                                           counts=False)
        if self.bar is not None:
            if done:
                progress.set_fraction(self.bar, 1.0)
            self.bar.close()
            self.bar = None


def _print_summary(sm: dict) -> None:
    def pct(k):
        v = sm.get(k)
        return f"{v:.2%}" if isinstance(v, (int, float)) and v == v else "-"
    print("result:")
    if "teacher_label" in sm:
        print(f"  teacher        {sm['teacher_label']:<16} test acc {pct('teacher_test_acc')}")
    if "baseline_test_acc" in sm:
        print(f"  student alone  {sm.get('student_label', ''):<16} test acc {pct('baseline_test_acc')}")
    print(f"  student ({sm.get('method', '?')}) {sm.get('student_label', ''):<10} test acc "
          f"{pct('final_test_acc')}")
    if "baseline_test_acc" in sm and "final_test_acc" in sm:
        gain = sm["final_test_acc"] - sm["baseline_test_acc"]
        print(f"  the teacher {'helped' if gain > 0 else 'did not help'}: {gain * 100:+.2f} points")


def _engine(store=None):
    """The CLI's engine: one run at a time here, or on Ray when KD_RAY_ADDRESS names a cluster."""
    from kdengine import Engine
    return Engine(store=store, max_workers=1, ray_address=os.environ.get("KD_RAY_ADDRESS") or None)


def _store():
    from kdengine import Store
    return Store()


def cmd_list(args) -> int:
    runs = _store().list_runs(limit=args.limit)
    print(f"{'id':<24} {'status':<11} {'method':<13} {'data':<9} {'test acc':>8}  name")
    for r in runs:
        acc = r["summary"].get("final_test_acc")
        acc_txt = f"{acc:.4f}" if isinstance(acc, float) else "-"
        print(f"{r['id']:<24} {r['status']:<11} {r['method']:<13} "
              f"{r['config'].get('data', {}).get('name', ''):<9} {acc_txt:>8}  {r['name']}")
    return 0


def _get(store, run: str) -> dict:
    row = store.find_run(run)
    if row is None:
        raise ConfigError("run", f"no run (or no unique run) matches {run!r}")
    return row


def cmd_show(args) -> int:
    store = _store()
    row = _get(store, args.run)
    print(json.dumps({k: row[k] for k in ("id", "name", "status", "error", "method", "seed",
                                          "config_hash", "summary", "versions", "config")},
                     indent=2, default=str))
    return 0


def cmd_export(args) -> int:
    store = _store()
    row = _get(store, args.run)
    if args.format == "ipynb":      # a notebook to take home: a .zip with the teacher's weights
        from kdengine import get_method_class, teacher_is_cached, write_notebook
        for path in write_notebook(store, row["id"], args.output or f"kd_{row['id']}.zip"):
            print(f"wrote {path}")
        cfg = RunConfig.from_dict(row["config"])
        if get_method_class(cfg.method.name).needs_teacher and not teacher_is_cached(cfg):
            print("the run's teacher is no longer cached: the notebook trains it first "
                  f"({cfg.teacher.epochs} epochs)")
        return 0
    text = export_run(store, row["id"], args.format)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_presets(args) -> int:
    for name, first in list_presets().items():
        print(f"{name:<28} {first}")
    return 0


def cmd_methods(args) -> int:
    from kdengine import field_specs, get_method_class, method_names
    for name in method_names():
        cls = get_method_class(name)
        knobs = ", ".join(f"{s['name']}={s['default']}" for s in field_specs(cls.Params))
        print(f"{name:<15} {cls.title}\n{'':<15} {knobs}")
    return 0


def cmd_prune(args) -> int:
    # The command line acts as the instructor on its own machine (caller None): everyone's runs.
    from kdengine import Engine
    eng = Engine(store=_store(), max_workers=1)
    try:
        n = eng.prune(keep=args.keep)
    finally:
        eng.shutdown()
    print(f"deleted {n} finished runs; kept the newest {args.keep}")
    return 0


def cmd_resume(args) -> int:
    store = _store()
    row = _get(store, args.run)
    eng = _engine(store)
    rid = eng.resume_run(row["id"])
    st = eng.wait(rid)
    s = eng.snapshot(rid)
    eng.shutdown()
    print(f"run {rid} {st}" + (f": {s.error}" if s.error else ""))
    if st == "done":
        _print_summary(s.summary)
    return 0 if st == "done" else 1


def cmd_sweep(args) -> int:
    """A grid over two (or more) knobs, e.g. --axis method.params.T=1,2,4 --axis
    method.params.soft_weight=0.5,0.9; prints the grid of the chosen metric when it is done.
    The cells are engine runs: with KD_RAY_ADDRESS set, the engine trains them on that Ray cluster."""
    from kdengine import parse_values, resume_sweep, start_sweep
    eng = _engine()
    resumed = eng.store.get_sweep(args.resume) if args.resume else None
    if args.mode == "search" or (resumed or {}).get("kind") == "search":
        return _search(eng, args)
    args.metric = args.metric or "final_test_acc"
    if args.resume:
        sweep = resume_sweep(eng, args.resume, args.backend)
    else:
        if not args.config:
            raise ConfigError("config", "a sweep needs --config (or --resume SWEEP_ID)")
        axes = {}
        for item in args.axis or []:
            if "=" not in item:
                raise ConfigError(item, "--axis takes KEY=V1,V2,..., e.g. method.params.T=1,2,4")
            key, values = item.split("=", 1)
            axes[key.strip()] = parse_values(values)
        cfg = load_config(args.config, args.set)
        sweep = start_sweep(eng, {"base": cfg.to_dict(), "axes": axes,
                                  "backend": args.backend or "local", "metric": args.metric},
                            owner="cli")
    print(f"sweep {sweep.id}: {len(sweep.cells)} cells on the {sweep.spec.backend} backend")
    for note in sweep.notices:
        print(f"note: {note}")
    from kdengine.core import progress
    with progress.bar(len(sweep.cells), "  cells", unit="cell") as b:
        try:
            while not sweep.done:
                progress.set_fraction(b, sweep.progress())
                time.sleep(0.5)
            progress.set_fraction(b, sweep.progress())
        except KeyboardInterrupt:
            sweep.stop()
    keys = list(sweep.spec.axes)
    for row in sweep.rows():
        knobs = "  ".join(f"{k.rsplit('.', 1)[-1]}={row.get(k)}" for k in keys)
        val = row.get(args.metric)
        print(f"  {knobs:<40} {row['status']:<9} {args.metric} "
              f"{val:.4f}" if isinstance(val, float) else f"  {knobs:<40} {row['status']}")
    eng.shutdown()
    return 0 if sweep.status == "done" else 1


def _search(eng, args) -> int:
    """--mode search: TPE over the --axis ranges (KEY=LOW:HIGH[:log], KEY=A,B or KEY alone for the
    knob's default range), one progress line, then the trials and the best config."""
    from kdengine import best_trial, resume_search, start_search
    from kdengine.experiments.search import parse_range
    metric = (args.metric or "val_acc").removeprefix("final_")
    if args.resume:
        search = resume_search(eng, args.resume, args.trials)
    else:
        if not args.config:
            raise ConfigError("config", "a search needs --config (or --resume SEARCH_ID)")
        cfg = load_config(args.config, args.set)
        space = {}
        for item in args.axis or ["method.params.T", "method.params.soft_weight"]:
            key, _, text = item.partition("=")
            space[key.strip()] = parse_range(cfg, key.strip(), text)
        search = start_search(eng, {"base": cfg.to_dict(), "space": space, "n_trials": args.trials or 16,
                                    "timeout_s": args.timeout, "pruner": args.pruner, "seed": args.seed,
                                    "metric": metric, "backend": args.backend or "local",
                                    "name": cfg.name or "cli search"}, owner="cli")
    spec = search.spec
    print(f"search {search.id}: {spec.n_trials} trials of {', '.join(spec.space)} on the "
          f"{spec.backend} backend, pruner {spec.pruner}, metric {spec.metric}")
    for note in search.notices:
        print(f"note: {note}")
    def progress() -> None:
        rows = search.rows()
        best = best_trial(rows, spec)
        print(f"\r  {search.finished()}/{spec.n_trials} trials, "
              f"{sum(r['state'] == 'pruned' for r in rows)} pruned, {search.epochs_used()} epochs"
              + (f", best {spec.metric} {best['value']:.4f}" if best else ""), end="", flush=True)
    try:
        while not search.done:
            progress()
            time.sleep(0.5)
    except KeyboardInterrupt:
        search.stop()
        search.wait(60)
    progress()
    print()
    rows = search.rows()
    for r in rows:
        knobs = "  ".join(f"{k.rsplit('.', 1)[-1]}={r.get(k):.4g}" if isinstance(r.get(k), float)
                          else f"{k.rsplit('.', 1)[-1]}={r.get(k)}" for k in spec.space)
        val = f"{r['value']:.4f}" if isinstance(r["value"], float) else "-"
        print(f"  #{r['trial']:<3} {knobs:<44} {r['state']:<9} {r['epochs']} epochs  {spec.metric} {val}")
    best = best_trial(rows, spec)
    if best:
        print(f"best: trial #{best['trial']} ({spec.metric} {best['value']:.4f}), run {best['run_id']}")
    if search.error:
        print(f"error: {search.error}", file=sys.stderr)
    eng.shutdown()
    return 0 if search.status == "done" else 1


def cmd_class(args) -> int:
    """The class on this machine's data folder, as the instructor: the lesson lock, answers, the
    board's numbers, a CSV, a new class (the same calls as the Instructor page)."""
    from kdengine import Engine, Roster, by_lesson, class_csv, lesson_lock, new_class
    from kdengine.teaching.classroom import student_labels
    eng = Engine(store=_store(), max_workers=1)
    state, book = eng.classroom, Roster(eng.store.root)
    try:
        if args.action == "lock":
            if not args.lesson:
                raise ConfigError("lesson", "class lock needs a lesson id, e.g. why-temperature")
            lock, problems = lesson_lock(args.lesson, _parse_sets(args.knobs))
            if lock is None:
                raise ConfigError("lock", "; ".join(problems))
            state.set_lock(lock)
        elif args.action == "unlock":
            state.set_lock(None)
        elif args.action in ("reveal", "hide"):
            if not args.lesson:
                raise ConfigError("lesson", f"class {args.action} needs a lesson id")
            state.reveal(args.lesson, args.action == "reveal")
        elif args.action == "new":
            print(f"{new_class(eng, book)} archived")
        runs = eng.list_runs(limit=5000, archived=False)
        labels = student_labels(runs, book.names())
        if args.action == "csv":
            text = class_csv(runs, labels)
            if args.output:
                Path(args.output).write_text(text)
            else:
                sys.stdout.write(text)
            return 0
        lock = state.lock()
        print(f"{state.label()}: {len(runs)} runs, {len(labels)} students")
        print("lock: " + (f"{lock.lesson} " + ", ".join(f"{k}={v}" for k, v in lock.locked.items())
                          if lock else "none"))
        for lid, mine in by_lesson(runs).items():
            shown = " (answer revealed)" if lid in state.revealed() else ""
            print(f"  {lid:<20} {len(mine)} runs{shown}")
    finally:
        eng.shutdown()
    return 0


def cmd_data(args) -> int:
    from kdengine.data.fetch import fetch, listing
    if args.action == "fetch":
        fetch(args.names or ["mnist", "fashion_mnist", "cifar10"])
        return 0
    if args.action == "import":
        from kdengine.data.archives import import_paths    # import_files on paths
        if len(args.names) < 2:
            raise ConfigError("data import", "takes a data set and its files, e.g. data import "
                                             "cifar10 cifar-10-python.tar.gz")
        for line in import_paths(args.names[0], args.names[1:],
                                 progress=lambda fraction, text: print(f"  {text}")):
            print(line)
        return 0
    for r in listing():
        check = {None: "no checksums recorded", True: "checksums ok",
                 False: "CHECKSUMS DIFFER"}[r["checksums_ok"]]
        state = f"present, {r['bytes'] / 2**20:.0f} MiB, {check}" if r["present"] else "missing"
        print(f"{r['name']:<14} {state}")
    return 0


def _public_url(args) -> str | None:
    """``--public-url``, else ``KD_PUBLIC_URL`` (a bad one is refused naming where it came from)."""
    import os
    from kdengine.teaching.class_server import PUBLIC_URL_ENV, check_public_url
    if args.public_url:
        return check_public_url(args.public_url, "--public-url")
    env = os.environ.get(PUBLIC_URL_ENV, "").strip()
    return check_public_url(env, PUBLIC_URL_ENV) if env else None


def cmd_serve(args) -> int:
    """Start the web app for a class: print where it listens and the student and instructor links,
    then become the Streamlit server (exec: signals and the exit status are the server's own)."""
    import os
    from kdengine import data_root
    from kdengine.teaching import class_server as cs
    settings = cs.ServeSettings(address=args.address, port=args.port, public_url=_public_url(args),
                                workers=args.workers, slots=args.slots, threads=args.threads,
                                ray_address=args.ray)
    root, app = data_root(), cs.app_file()
    env = {**os.environ, **settings.env(root)}
    token, where, new = cs.resolve_token(args.token, env, root, keep=not args.dry_run)
    links = settings.links(token if (new or args.show_token) else None)
    where_path = f", path /{settings.base_path}" if settings.base_path else ""
    print(f"KD Playground class server\n"
          f"  data folder      {root}\n"
          f"  listens on       {settings.address}:{settings.port}{where_path}\n"
          f"  runs train       {cs.describe_executor(env)}\n"
          f"  instructor token {where}\n"
          f"Students open      {links['student']}\n"
          f"Instructor link    {links['instructor']}")
    if new:
        print("  (a new instructor token: it is kept in the data folder and not printed again; "
              "python -m kdengine serve --dry-run --show-token shows it)")
    elif token and not args.show_token:
        print("  (add ?tok= and the instructor token; --show-token prints the whole link)")
    if settings.address in ("0.0.0.0", "::") and not settings.public_url:
        print(f"  (students on other machines open this machine's address, port {settings.port}; "
              f"--public-url prints the links they use)")
    cmd = settings.streamlit_command(app)
    if args.dry_run:
        print("would run: " + " ".join(cmd))
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(app.parent)           # Streamlit reads .streamlit/config.toml from where it starts
    os.execve(sys.executable, cmd, env)
    return 0                       # not reached


def cmd_health(args) -> int:
    """Exit 0 when the server on this machine answers its health check (the container's probe)."""
    import urllib.request
    from kdengine.teaching import class_server as cs
    url = cs.ServeSettings(address=args.address, port=args.port,
                           public_url=_public_url(args)).health_url()
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as r:
            ok = r.read().strip() == b"ok"
    except OSError as e:
        print(f"error: {url}: {e}", file=sys.stderr)
        return 1
    print(f"{'ok' if ok else 'not ok'}: {url}")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m kdengine", description="KD Playground engine")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train", help="train one config (file or preset name)")
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field, e.g. --set method.params.T=8 (repeatable)")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("sweep", help="run a grid over config fields (or resume one)")
    p.add_argument("--config", help="base config file or preset name")
    p.add_argument("--axis", action="append", metavar="KEY=V1,V2,...")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--backend", choices=("local", "vectorised"), default=None,
                   help="local (default): one run per cell or trial; vectorised: cells that differ "
                        "only in method knobs train as stacked students in one pass. Either way "
                        "the runs go to the engine, on Ray when KD_RAY_ADDRESS is set. --resume "
                        "keeps the stored backend unless this is given")
    p.add_argument("--metric", default=None,
                   help="grid: a summary key (final_test_acc); search: val_acc (default), test_acc, "
                        "agreement or kl_test")
    p.add_argument("--resume", metavar="SWEEP_ID")
    p.add_argument("--mode", choices=("grid", "search"), default="grid",
                   help="search: Optuna TPE over the --axis ranges (KEY=LOW:HIGH[:log] or KEY=A,B)")
    p.add_argument("--trials", type=int, help="search: trial budget (default 16)")
    p.add_argument("--timeout", type=float, help="search: time budget in seconds")
    p.add_argument("--pruner", choices=("median", "asha", "none"), default="median")
    p.add_argument("--seed", type=int, default=0, help="search: sampler seed (reproduces the study)")
    p.set_defaults(fn=cmd_sweep)
    p = sub.add_parser("list", help="list stored runs")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(fn=cmd_list)
    p = sub.add_parser("show", help="show one run")
    p.add_argument("run")
    p.set_defaults(fn=cmd_show)
    p = sub.add_parser("export", help="export a run's metrics, or a notebook that trains it again")
    p.add_argument("run")
    p.add_argument("--format", choices=("csv", "json", "ipynb"), default="json",
                   help="ipynb: a plain-PyTorch Jupyter notebook of the run, in a .zip with the "
                        "teacher's weights (or, with -o NAME.ipynb, the two files side by side)")
    p.add_argument("--output", "-o")
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("presets", help="list shipped presets")
    p.set_defaults(fn=cmd_presets)
    p = sub.add_parser("methods", help="list distillation methods and their knobs")
    p.set_defaults(fn=cmd_methods)
    p = sub.add_parser("prune", help="delete old finished runs")
    p.add_argument("--keep", type=int, default=100)
    p.set_defaults(fn=cmd_prune)
    p = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint")
    p.add_argument("run")
    p.set_defaults(fn=cmd_resume)
    p = sub.add_parser("class", help="the class: show it, lock a lesson's knobs, reveal an "
                                     "answer, a CSV of its runs, start a new class")
    p.add_argument("action", nargs="?", default="show",
                   choices=("show", "lock", "unlock", "reveal", "hide", "csv", "new"))
    p.add_argument("lesson", nargs="?", help="lock / reveal / hide: the lesson id")
    p.add_argument("knobs", nargs="*", metavar="KEY=VALUE",
                   help="lock: the knobs to fix, e.g. method.params.T=2")
    p.add_argument("--output", "-o", help="csv: write here instead of printing")
    p.set_defaults(fn=cmd_class)
    p = sub.add_parser("data", help="class prep: fetch real data sets, load them from archives, "
                                    "list what is present")
    p.add_argument("action", choices=("fetch", "import", "list"))
    p.add_argument("names", nargs="*",
                   help="fetch: mnist, fashion_mnist, cifar10 (default all); import: a set and its "
                        "files, e.g. mnist train-images-idx3-ubyte.gz ... (the four .gz files) or "
                        "cifar10 cifar-10-python.tar.gz")
    p.set_defaults(fn=cmd_data)
    p = sub.add_parser("serve", help="start the web app for a class and print its links",
                       description="Start the web app for a class (docs/serving.md).")
    p.add_argument("--address", default="localhost",
                   help="address to listen on (default localhost; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--public-url", metavar="URL",
                   help="the address students open, e.g. https://kd.example.org/workshop: links are "
                        "built under it and its path is served (default: KD_PUBLIC_URL, else "
                        "http://localhost:PORT)")
    p.add_argument("--token", help="set the instructor token (kept in the data folder from now on; "
                                   "default: KD_INSTRUCTOR_TOKEN, else the kept one, else a new one)")
    p.add_argument("--show-token", action="store_true",
                   help="print the instructor link with its token")
    p.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    p.add_argument("--slots", type=int, help="runs each worker (process or Ray actor) time-slices (default 4)")
    p.add_argument("--threads", action="store_true", help="train on threads in the server process")
    p.add_argument("--ray", metavar="ADDRESS", help="train on Ray: auto, ray://HEAD:10001 or local")
    p.add_argument("--dry-run", action="store_true",
                   help="print the settings, the links and the command; start nothing")
    p.set_defaults(fn=cmd_serve)
    p = sub.add_parser("health", help="check that the server on this machine answers")
    p.add_argument("--address", default="localhost")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--public-url", metavar="URL", help="default: KD_PUBLIC_URL (its path is served)")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(fn=cmd_health)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # DataUnavailable, CheckpointError: one clear line, not a traceback
        from kdengine import CheckpointError, DataUnavailable, NotExportable
        if isinstance(e, (DataUnavailable, CheckpointError, NotExportable)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
