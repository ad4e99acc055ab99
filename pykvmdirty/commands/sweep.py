"""``pykvmdirty sweep``: a grid of compare cells through an executor — local
processes by default, a Dask cluster with --dask tcp://HOST:PORT — merged
into one JSON/CSV table and plot. Deterministic (counters and modelled kernel
time, no clocks) by default, so any executor gives the same table; --timed
measures wall time on whichever worker runs each cell."""
import os

from ..analysis import compare as cmp
from ..analysis import sweep as sw
from ._args import check_output_paths, check_plot_available, positive_int
from ._grid import Progress, add_scenario_options, expand_backends, load_cost_model


def register(sub):
    p = sub.add_parser("sweep", help="run a grid of compare cells on local processes or a "
                       "Dask cluster; one merged JSON/CSV table and plot",
                       description=__doc__)
    add_scenario_options(p, layouts_plural=True)
    p.add_argument("--timed", action="store_true",
                   help="measure wall time per cell instead of the deterministic mode "
                   "(results then depend on the machine that ran each cell)")
    p.add_argument("--dask", metavar="tcp://HOST:PORT",
                   help="run on this Dask scheduler (pip install 'pykvmdirty[dask]')")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="local worker processes (default: one per core)")
    p.add_argument("--csv", metavar="FILE", help="write the merged table as CSV")
    p.set_defaults(func=run)


def run(args):
    if args.deterministic and args.timed:
        raise ValueError("--deterministic and --timed contradict each other")
    if args.dask and args.workers:
        raise ValueError("--workers applies to local processes, not to --dask")
    if args.dask:
        sw.check_dask_address(args.dask)
    check_output_paths(args, ("--json", "--csv", "--plot"))
    model = load_cost_model(args.cost_model)
    check_plot_available(args.plot)
    grid = sw.Grid(sizes_gib=args.sizes, dirty=args.dirty,
                   backends=expand_backends(args.backends), layouts=args.layouts,
                   slot_gib=args.slot_gib, repeats=args.repeats, seed=args.seed,
                   deterministic=not args.timed)
    if not args.dask:  # local workers share this machine's memory
        for scenario in grid.scenarios():
            cmp.check_memory(scenario, args.max_memory,
                             copies=min(args.workers or os.cpu_count() or 1,
                                        len(scenario.cells())))
    ntasks = len(grid.tasks())
    executor = sw.dask_executor(args.dask) if args.dask else sw.local_executor(args.workers)
    progress = Progress(ntasks, "sweep", not args.no_progress)
    try:
        with executor as ex:
            result = sw.run_sweep(grid, ex, cost_model=model, progress=progress)
    finally:
        progress.close()
    for part in sw.as_compare_results(result):
        if len(grid.layouts) > 1:
            print("layout %s:" % part["scenario"]["layout"])
        print(cmp.format_table(part))
        print()
    print("%d cells on %s" % (ntasks, ("Dask at %s" % args.dask) if args.dask
                                else "local processes"))
    if args.json:
        sw.write_json(args.json, result)
        print("wrote %s" % args.json)
    if args.csv:
        sw.write_csv(args.csv, result)
        print("wrote %s" % args.csv)
    if args.plot:
        for p in sw.plot(result, args.plot):
            print("wrote %s" % p)
    return 0
