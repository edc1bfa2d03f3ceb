import inspect
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.io import report as report_output
from snakemake.utils import validate


validate(config, "../../config/schema.yaml", set_default=True)

# The checkout's bayeslib and the scripts' checksums, as the jobs import them.
sys.path[:0] = [workflow.basedir, str(Path(workflow.basedir, "workflow", "scripts"))]
import checksums

try:
    import bayeslib
except ImportError:  # snakemake outside the jobs' environment (--sdm conda): the jobs check
    bayeslib = None

SCENARIOS = {s["name"]: s for s in config["scenarios"]}
SAMPLERS = {s["name"]: s for s in config["samplers"]}
REPLICATES = config["replicates"]
PLOT_REPLICATES = list(range(min(config["plot_replicates"], REPLICATES)))
# Declared on sample jobs with device: cuda, so that a cluster executor places them on a GPU node.
GPU_RESOURCES = {"gpu": 1, "gpu_manufacturer": "nvidia"} if config["device"] == "cuda" else {}
PLOT_KINDS = ["trace", "rank", "posterior", "forest", "ppc", "sampler", "question"]


def _check_config():
    for key, items in (("scenarios", config["scenarios"]), ("samplers", config["samplers"])):
        names = [item["name"] for item in items]
        if len(set(names)) != len(names):
            raise ValueError(f"config: {key} has a repeated name: {names}")
    for scenario in config["scenarios"]:
        unknown = set(scenario.get("samplers", [])) - set(SAMPLERS)
        if unknown:
            raise ValueError(
                f"config: scenarios[{scenario['name']}].samplers names {sorted(unknown)}, "
                f"which are not in samplers ({list(SAMPLERS)})"
            )
    for sampler in config["samplers"]:
        if sampler["chains"] % sampler["superchains"]:
            raise ValueError(
                f"config: samplers[{sampler['name']}].superchains ({sampler['superchains']}) must "
                f"divide its chains ({sampler['chains']}): each superchain is the same number of "
                "chains started from one point"
            )
    recovery = config["recovery"]
    if (recovery["rank_draws"] + 1) % recovery["rank_bins"]:
        raise ValueError(
            "config: recovery.rank_draws + 1 must be a multiple of recovery.rank_bins, so that "
            f"the ranks 0..rank_draws fill the bins evenly (got {recovery['rank_draws']} and "
            f"{recovery['rank_bins']})"
        )
    if bayeslib is not None:
        _check_sampler_options()
        _check_new_x()


def _check_sampler_options():
    """Options a sampler does not take, or values it refuses, fail now, not in its jobs."""
    from bayeslib.samplers import SAMPLERS as KERNELS
    from bayeslib.samplers import make_sampler

    for sampler in config["samplers"]:
        name, options = sampler["name"], sampler["options"]
        accepted = list(inspect.signature(KERNELS[name]).parameters)
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(
                f"config: samplers[{name}].options has {unknown}, which the {name} sampler "
                f"does not take; its options are {accepted}: correct the name or remove it"
            )
        try:
            make_sampler(name, **options)
        except (TypeError, ValueError) as error:
            raise ValueError(f"config: samplers[{name}].options: {error}") from None


def _check_new_x():
    """new_x is one input row of every linear regression: as many values as its coefficients."""
    from bayeslib.models import LinearRegression

    default_beta = inspect.signature(LinearRegression.simulate).parameters["beta"]
    for scenario in config["scenarios"]:
        if scenario["model"] != "linear_regression":
            continue
        coefficients = len(scenario.get("beta", default_beta.default))
        if len(config["new_x"]) != coefficients:
            raise ValueError(
                f"config: new_x has {len(config['new_x'])} values ({config['new_x']}), but "
                f"scenarios[{scenario['name']}] has {coefficients} coefficients (beta, the first "
                f"the intercept): give new_x {coefficients} values, the first 1.0 for the intercept"
            )


def check_device():
    """device: cuda where jobs run on this machine and it has no CUDA fails before the first
    job (the onstart handler; a cluster's jobs run on its GPU nodes instead)."""
    if bayeslib is None or not workflow.local_exec:
        return
    from bayeslib.sampling import resolve_device

    try:
        resolve_device(config["device"])
    except ValueError as error:
        raise WorkflowError(
            f"config: device: {error}; or run the sample jobs on GPU nodes with a cluster profile"
        ) from None


def _remove_changed_outputs():
    """Outputs that no longer match the checksum written with them (truncated, or changed after
    they were written: Snakemake sees only their times) are removed, so that this run makes
    them, and every file made from them, again."""
    if not workflow.is_main_process or any(Path(".snakemake/locks").glob("*")):
        return  # a job's own process, or another run that may be writing them
    for path in checksums.mismatched("results"):
        print(
            f"{path} does not match its checksum ({checksums.sidecar(path)}): removed, to be "
            "made again",
            file=sys.stderr,
        )
        path.unlink()
        checksums.sidecar(path).unlink()


_check_config()
_remove_changed_outputs()


wildcard_constraints:
    scenario="|".join(SCENARIOS),
    sampler="|".join(SAMPLERS),
    replicate=r"\d+",


def samplers_of(scenario):
    return SCENARIOS[scenario].get("samplers") or list(SAMPLERS)


def analyses():
    """Every (scenario, sampler) the study fits: one job fits all of a scenario's replicates."""
    return [(scenario, sampler) for scenario in SCENARIOS for sampler in samplers_of(scenario)]


def posterior_files(scenario=None, sampler=None):
    return [
        f"results/posterior/{sc}/{sa}.npz"
        for sc, sa in analyses()
        if scenario in (None, sc) and sampler in (None, sa)
    ]


def data_files(scenario=None):
    return [f"results/data/{sc}.npz" for sc in SCENARIOS if scenario in (None, sc)]


def map_files(scenario=None):
    return [f"results/map/{sc}.npz" for sc in SCENARIOS if scenario in (None, sc)]


def analysis_files(name):
    return [f"results/analysis/{sc}/{sa}/{name}" for sc, sa in analyses()]


def plot_outputs():
    return [
        report_output(
            f"results/plots/{{scenario}}/{{sampler}}/{replicate}/{kind}.png",
            caption=f"../report/{kind}.rst",
            category="{scenario}",
            subcategory="{sampler}",
            labels={"figure": kind, "replicate": str(replicate)},
        )
        for replicate in PLOT_REPLICATES
        for kind in PLOT_KINDS
    ]


def plot_files():
    return [
        f"results/plots/{sc}/{sa}/{r}/{kind}.png"
        for sc, sa in analyses()
        for r in PLOT_REPLICATES
        for kind in PLOT_KINDS
    ]


RECOVERY = {
    "table": "results/recovery/recovery.csv",
    "table_html": "results/recovery/recovery.html",
    "verdict": "results/recovery/verdict.csv",
    "verdict_html": "results/recovery/verdict.html",
    "text": "results/recovery/verdict.txt",
    "ranks": "results/recovery/ranks.csv",
    "check": "results/recovery/check.json",
    "coverage_plot": "results/recovery/coverage.png",
    "rank_plot": "results/recovery/ranks.png",
}
REPORT = {
    "fits": "results/report/fits.csv",
    "fits_html": "results/report/fits.html",
    "efficiency": "results/report/efficiency.png",
}


def science_files():
    """Every file the study computes, in a fixed order: what is tracked, hashed and reproduced."""
    return (
        data_files()
        + map_files()
        + posterior_files()
        + analysis_files("summary.csv")
        + analysis_files("summary.html")
        + analysis_files("fits.csv")
        + analysis_files("ppc.csv")
        + analysis_files("recovery.csv")
        + analysis_files("ranks.csv")
        + list(RECOVERY.values())
        + list(REPORT.values())
        + plot_files()
    )


def track_inputs(wc):
    """The track rule logs the study; for the reproduce target, also the verdict."""
    inputs = {"science": science_files()}
    if wc.target == "reproduce":
        inputs["verdict"] = "results/reproduce/verdict.json"
        inputs["study"] = "results/mlflow/study.logged.json"
    return inputs


def report_description(static):
    """The report's first page: the study's description, led by its verdict table once the
    recovery rule has written one (and the reproduce verdict when there is one)."""
    static = Path(workflow.basedir, static)
    try:
        return _description_with_verdict(static)
    except (OSError, ValueError, KeyError):  # no verdict yet, or an unreadable one
        return str(static)


def _description_with_verdict(static):
    import csv
    import json

    def number(text, digits):
        return f"{float(text):.{digits}f}" if text not in ("", "nan") else "-"

    verdict = Path(RECOVERY["verdict"])
    check = json.loads(Path(RECOVERY["check"]).read_text())
    rows = list(csv.DictReader(verdict.open()))
    levels = config["recovery"]["levels"]
    # Narrow enough to sit beside the report's workflow graph; the bands are in the table below.
    header = ["scenario / sampler", "verdict", "fits (failed)"]
    header += [f"{level:.0%} coverage" for level in levels]
    header += ["SBC p", "power"]
    lines = [
        "Recovery verdict: " + ("**passed**" if check["passed"] else "**FAILED**"),
        "=" * 60,
        "",
        ".. raw:: html",
        "",
        "   <style>.prose table.verdict :is(th, td) {padding: 0.3em 0.45em}</style>",
        "",
        ".. csv-table::",
        "   :class: verdict",
        "   :header: " + ", ".join(f'"{h}"' for h in header),
        "",
    ]
    for row in rows:
        cells = [
            f"{row['scenario']}/{row['sampler']}",
            "passed" if row["passed"] == "True" else "**FAILED**",
            f"{row['fits']} ({row['failed_fits']})",
        ]
        for level in levels:
            key = f"coverage_{level:g}"
            cells.append(f"{number(row[key + '_min'], 2)}-{number(row[key + '_max'], 2)}")
        cells += [number(row["rank_p_value_min"], 3), number(row["power"], 2)]
        lines.append("   " + ", ".join(f'"{c}"' for c in cells))
    lines += [
        "",
        "Coverage: the range over parameters; each must lie in its binomial band "
        f"({1 - config['recovery']['alpha']:.1%}), listed in recovery > verdict.",
    ]
    lines.append("")
    for failure in check["failures"]:
        lines.append(f"- {failure}")
    for fit in check["failed_fits"][:20]:
        lines.append(
            f"- failed fit {fit['scenario']}/{fit['replicate']}/{fit['sampler']}: {fit['reason']}"
        )
    reproduce = Path("results/reproduce/verdict.json")
    if reproduce.exists():
        result = json.loads(reproduce.read_text())
        lines += [
            "",
            f"Reproduce verdict: {'**passed**' if result['passed'] else '**FAILED**'} "
            f"({result['mode']}; {result['numbers_compared']} numbers compared, "
            f"{result['numbers_different']} different).",
        ]
    lines += ["", "", static.read_text()]
    out = Path(".snakemake/report/workflow.rst")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return str(out.resolve())
