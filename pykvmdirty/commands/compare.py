"""``pykvmdirty compare``: how do the dirty-log interfaces compare for my guest
size and dirty rate? Runs with no arguments: 1, 64 and 512 GiB x 0, 1,000 and
100,000 scattered dirty pages x every backend that runs here, plus the numpy
flatnonzero and plain-read baselines on the same bitmap."""
import json

from ..analysis import compare as cmp
from ._args import check_output_paths, check_plot_available
from ._grid import Progress, add_scenario_options, expand_backends, load_cost_model


def register(sub):
    p = sub.add_parser("compare", help="compare dirty-log interfaces: collect+scan time, "
                       "modelled kernel time, log memory (the main command)",
                       description=__doc__)
    add_scenario_options(p)
    p.add_argument("--guest-impact", action="store_true",
                   help="also what the guest feels: exit waits on the global lock per loop "
                   "placement and interface, and the kernel's lock during collection (real "
                   "kvm vs the emulated model) for the --sizes (analysis/guest_stalls.py)")
    p.set_defaults(func=run)


def write_json(path, result):
    with open(path, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")


def run(args):
    check_output_paths(args, ("--json", "--plot"))
    model = load_cost_model(args.cost_model)
    check_plot_available(args.plot)
    scenario = cmp.Scenario(sizes_gib=args.sizes, dirty=args.dirty,
                            backends=expand_backends(args.backends), repeats=args.repeats,
                            layout=args.layout, slot_gib=args.slot_gib, seed=args.seed,
                            deterministic=args.deterministic)
    cmp.memory_refusals(scenario, args.max_memory)  # refuses a grid where nothing fits
    progress = Progress(len(scenario.cells()), "compare", not args.no_progress)
    try:
        result = cmp.run_compare(scenario, cost_model=model, progress=progress,
                                 max_memory=args.max_memory)
    finally:
        progress.close()
    print(cmp.format_table(result))
    if args.guest_impact:
        from ..analysis import guest_stalls
        result["guest_impact"] = guest_stalls.section(args.sizes)
        print()
        print(guest_stalls.format_section(result["guest_impact"]))
    if args.json:
        write_json(args.json, result)
        print("wrote %s" % args.json)
    if args.plot:
        cmp.plot(result, args.plot)
        print("wrote %s" % args.plot)
    bad = [c for c in result["cells"] if c["status"] == "error"]
    return 1 if any("differ" in (c["reason"] or "") for c in bad) else 0
