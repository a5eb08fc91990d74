"""The `harness` commands: one `cmd_*` per sub-command, importing what it needs when it runs.
"""

from __future__ import annotations

import sys

from harness.core.settings import DEFAULT_LEDGER


def _ledger(args, name=None):
    """The ledger a command reads: --ledger, else the one holding iteration `name`
    (harness.ledger.locate.locate: runs.yaml first, then experiments/*.yaml), else runs.yaml."""
    from harness import ledger
    from harness.ledger.locate import locate

    found = locate(name, args.ledger) if name else None
    if found and found.message:
        print(found.message)
    args.ledger = found.path if found else (args.ledger or DEFAULT_LEDGER)
    return ledger.load(args.ledger)


# --------------------------------------------------------------------------- commands


def cmd_list(args) -> int:
    if args.every:
        from harness.ledger.locate import all_ledgers

        for index, path in enumerate(all_ledgers()):
            args.ledger = str(path)
            print(("" if index == 0 else "\n") + f"== {path} (experiment {_ledger(args).experiment})")
            _list_one(args)
        return 0
    return _list_one(args)


def _list_one(args) -> int:
    book = _ledger(args)
    width = max(len(n) for n in book.names)
    for name in book.names:
        it = book.resolve(name)
        parent = f"<- {it.extends}" if it.extends else "(root)"
        print(f"{name:<{width}}  {parent:<13} {it.backbone.name:<11} epochs {it.epochs_label():<9} {it.title}")
    return 0


def cmd_show(args) -> int:
    from harness import ledger

    book = _ledger(args, args.iteration)
    iteration = book.resolve(args.iteration, args.profile)
    print(iteration.to_yaml(), end="")
    if iteration.extends is None:
        print("changes vs (none): root iteration")
        return 0
    parent = book.resolve(iteration.extends, args.profile)
    changes = ledger.diff(parent, iteration)
    print(f"changes vs {parent.name}:" + ("" if changes else " none"))
    for key, old, new in changes:
        print("  " + ledger.format_change(key, old, new))
    return 0


def cmd_validate(args) -> int:
    book = _ledger(args)
    resolved = book.validate_all()
    print(f"{args.ledger}: {len(resolved)} iterations valid "
          f"(experiment {book.experiment}; profiles: full, {', '.join(book.profiles)})")
    return 0


def cmd_run(args) -> int:
    from harness.run.launch import run_iteration

    from harness import ledger
    from harness.ledger.locate import locate_all

    if args.all and args.iterations:
        raise _usage("give iteration names or --all, not both")
    if not args.all and not args.iterations:
        raise _usage("name at least one iteration (see `harness list`) or give --all")
    if args.all:
        book = _ledger(args)
        plan = [(name, book) for name in book.names]
    else:
        plan = []
        for name, found in locate_all(args.iterations, args.ledger):
            if found.message:
                print(found.message)
            plan.append((name, ledger.load(found.path)))
    for name, book in plan:
        book.resolve(name)  # every name checked before anything trains
    if args.repeats is not None and args.repeats < 1:
        raise _usage(f"--repeats {args.repeats}: give a number of runs, 1 or more")
    if args.repeats is not None and (args.overrides or args.save_as or args.ray is not None):
        raise _usage("--repeats trains the ledger's iterations; it does not combine with --set, --save-as or --ray")
    variants = _variants(args, plan)  # --set checked too; --save-as writes the ledger, then trains NAME
    if args.save_as:
        plan = [(args.save_as, ledger.load(plan[0][1].path))]
    if args.ray is not None:
        from harness.run.parallel import run_parallel

        books = {id(book) for _, book in plan}
        if len(books) > 1:
            raise _usage("--ray trains iterations of one ledger at a time; give LEDGER= or names from one ledger")
        return run_parallel(plan[0][1], [name for name, _ in plan], args.ray, profile=args.profile, data_dir=args.data, fresh=args.fresh,
                            tracking_uri=args.tracking_uri, work_dir=args.work_dir,
                            skip_bad_rows=args.skip_bad_rows, skip_finished=args.all, limit=args.limit,
                            overrides=None if args.save_as else args.overrides)
    from harness.core.errors import IterationHeld

    from harness.run.repeats import repeats_of

    code = 0
    for name, book in plan:
        # --repeats N (or the ledger's `repeats`): N runs, each decided alone (harness.run.repeats)
        runs = (repeats_of(book, name, args.profile, args.repeats, args.fresh) or [variants.get(name)]
                if name not in variants else [variants[name]])
        for variant in runs:
            try:
                code = run_iteration(
                    book, name, profile=args.profile, data_dir=args.data, fresh=args.fresh,
                    tracking_uri=args.tracking_uri, work_dir=args.work_dir, skip_bad_rows=args.skip_bad_rows,
                    skip_finished=args.all, limit=args.limit, system_metrics=args.system_metrics, variant=variant,
                ) or code
            except IterationHeld as held:
                if not args.all:
                    raise
                print(f"{held.lines[0]}; skipping it")  # --all on two machines shares the ledger out
    return code


def _variants(args, plan) -> dict:
    """`--set PATH=VALUE`: iteration -> its variant (harness.run.variant), every flag checked
    against every named iteration before anything is written; with `--save-as NAME` the variant
    is written into the ledger (the same edit and checks as `sweep --promote`) and {} returned."""
    from harness.run.variant import override_run, save_variant

    if not args.overrides:
        if args.save_as:
            raise _usage("--save-as NAME saves a variant: give its changes with --set PATH=VALUE")
        return {}
    if args.all:
        raise _usage("--set trains a variant of the named iterations, not of --all")
    variants = {name: override_run(book, name, args.overrides, args.fresh) for name, book in plan}
    if args.save_as:
        if len(plan) != 1:
            raise _usage("--save-as NAME takes one iteration")
        (name, book), = plan
        from harness.ledger.promote import check_name

        check_name(book, args.save_as, "--save-as")
        line = save_variant(book, name, variants[name], args.save_as)
        print(f"{book.path}:{line}: added iteration {args.save_as} (extends {name}): "
              f"{variants[name].overrides.label()}; training it as {args.save_as}")
        return {}
    return variants


def cmd_reproduce(args) -> int:
    from harness import api

    return api.reproduce(args.run_id, strict=args.strict, at_commit=args.at_commit, data=args.data,
                         tracking_uri=args.tracking_uri, work_dir=args.work_dir,
                         system_metrics=args.system_metrics).code


def cmd_eval(args) -> int:
    import json

    from harness.run.evaluate import evaluate_iteration

    book = _ledger(args, args.iteration)
    result = evaluate_iteration(book, args.iteration, data_dir=args.data, tracking_uri=args.tracking_uri,
                                work_dir=args.work_dir, log_to_run=args.log)
    scored = f"{args.iteration}: run {result['run_id'][:8]} (profile {result['profile']}), selected checkpoint, " \
             f"{result['images']:,} images scored: {result['scored']}"
    if args.json:
        print(scored, file=sys.stderr)  # stdout stays pure JSON for tools
        print(json.dumps(result["eval"], indent=1))
    else:
        print(scored)
        for key, value in result["eval"].items():
            print(f"  {key:<22} {value:.4f}")
    if result["warning"]:
        print(result["warning"], file=sys.stderr)
    return 0


def cmd_params(args) -> int:
    from harness.models import build_model, count_params

    book = _ledger(args, args.iteration)
    iteration = book.resolve(args.iteration, args.profile)
    total, trainable, frozen = count_params(build_model(iteration))
    print(f"{iteration.name} ({iteration.backbone.name}, {iteration.data.image_size} px, "
          f"profile {args.profile or 'full'})")
    print(f"total         {total:>12,}")
    print(f"trainable     {trainable:>12,}")
    print(f"non-trainable {frozen:>12,}")
    return 0


def cmd_data_synth(args) -> int:
    from harness.data.synth import generate
    from harness.core.errors import InputError

    if args.n <= 0:
        raise InputError(f"harness data synth: --n must be a positive number of images (got {args.n})")

    generate(args.out, args.n, args.seed)
    print(f"wrote {args.n} synthetic images and hvc_annotations.csv to {args.out}")
    return 0


def cmd_table(args) -> int:
    from harness.report.table import run_table

    book = _ledger(args)
    return run_table(book, args.ledger, out=args.out, fmt=args.format, rebuild=args.rebuild, readme=args.readme,
                     no_readme=args.no_readme, plot_path=args.plot, tracking_uri=args.tracking_uri)


def cmd_runs(args) -> int:
    from harness.report.runs import run_list

    book = _ledger(args, args.iteration)
    return run_list(book, args.iteration, tracking_uri=args.tracking_uri, as_json=args.json)


def cmd_compare(args) -> int:
    from harness.report.compare import compare_runs

    book = _ledger(args)
    return compare_runs(book, args.runs, tracking_uri=args.tracking_uri, as_json=args.json)


def cmd_ui(args) -> int:
    from harness.core.errors import InputError
    from harness.core.metrics import val_acc
    from harness.services.ui import serve

    try:  # the ledger only names the experiment whose runs page to print; the UI works without one
        book = _ledger(args)
        experiment, sort_by = book.experiment, val_acc(book.resolve(book.names[0]).data.name)
    except InputError:
        experiment, sort_by = None, None
    return serve(args.tracking_uri, host=args.host, port=args.port, experiment=experiment, sort_by=sort_by)


def cmd_server(args) -> int:
    from harness.services import server

    return server.main(args)


def cmd_lr_find(args) -> int:
    from harness.run.lrfind import lr_find_iteration

    lr_find_iteration(_ledger(args, args.iteration), args.iteration, profile=args.profile, data_dir=args.data,
                      tracking_uri=args.tracking_uri, work_dir=args.work_dir, min_lr=args.min, max_lr=args.max,
                      steps=args.steps, out=args.out, limit=args.limit)
    return 0


def cmd_reference(args) -> int:
    from harness.run.reference import run_references

    run_references(_ledger(args), data_dir=args.data, profile=args.profile, tracking_uri=args.tracking_uri,
                   skip_bad_rows=args.skip_bad_rows)
    return 0


def cmd_sweep(args) -> int:
    from harness.sweep.plan import plan_sweep, promote_best, run_sweep

    book = _ledger(args)
    if args.trials is None and args.promote is None:
        from harness.core.errors import InputError

        raise InputError("harness sweep: give --trials N (run trials), --promote NAME (write the best back), or both")
    from harness.ledger.overrides import Overrides

    code = 0
    if args.trials is not None:
        if args.promote:
            from harness.ledger.promote import check_name

            check_name(book, args.promote)  # before hours of training, not after
        plan = plan_sweep(book, args.iteration, trials=args.trials, space_file=args.space, study=args.study,
                          storage=args.storage, metric=args.metric, seed=args.seed, startup_trials=args.startup_trials,
                          warmup_epochs=args.warmup_epochs, timeout=args.timeout, profile=args.profile,
                          data_dir=args.data, tracking_uri=args.tracking_uri, work_dir=args.work_dir,
                          overrides=Overrides.parse(args.overrides) or None)
        code = run_sweep(plan)
        args.study = plan.sweep
    if args.promote and code == 0:
        promote_best(_ledger(args), args.iteration, args.promote, study=args.study, storage=args.storage,
                     tracking_uri=args.tracking_uri, overrides=Overrides.parse(args.overrides) or None)
    return code


def cmd_register(args) -> int:
    from harness.serve.registry import register_iteration

    register_iteration(_ledger(args), args.iteration, alias=args.alias, tracking_uri=args.tracking_uri)
    return 0


def cmd_models(args) -> int:
    from harness.serve.registry import list_models

    return list_models(_ledger(args), tracking_uri=args.tracking_uri, as_json=args.json)


def cmd_predict(args) -> int:
    from harness.serve.registry import predict

    return predict(args.model, args.paths, book_loader=lambda: _ledger(args), tracking_uri=args.tracking_uri,
                   as_json=args.json, out_csv=args.out)


def _usage(message: str):
    from harness.core.errors import InputError

    return InputError(f"harness run: {message}")
