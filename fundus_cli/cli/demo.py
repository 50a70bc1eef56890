"""`fundus demo`: options -> config -> `api` call -> summary on stderr, result on stdout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fundus_cli import api
from fundus_cli.cli.app import JsonOpt, command, emit, err, say, state


@command("demo", "Whole pipeline on built-in photographs -> OUT_DIR/report.html.  e.g. fundus demo demo")
def demo_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Folder for everything the demo makes.")] = Path("demo"),
    n_photos: Annotated[Optional[int], typer.Option(help="Phantom photographs to make [default: 200; 60 with --quick].")] = None,
    size: Annotated[Optional[int], typer.Option(help="Image size in px for ingest and training [default: 64; 32 with "
                                                     "--quick].")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny settings (32 px, a few training steps, few images): "
                                                        "every step in about a minute; the models learn nothing.")] = False,
    archs: Annotated[str, typer.Option(help="Generators to train, sample, evaluate and audit: gan, vae, or vae,gan "
                                            "(the VAE adds ~14 minutes on 2 CPU cores).")] = "gan",
    seed: Annotated[int, typer.Option(help="Seed of every step.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (training, sampling, audit).")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Redo every step, also in a folder with other files or a demo "
                                                        "made with other settings.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the whole pipeline on built-in phantom photographs inside OUT_DIR: phantoms, ingest, train a
    conditional GAN (--preset demo; --archs vae,gan adds a VAE), sample from each, evaluate each, audit
    each for privacy, and write OUT_DIR/report.html. Before each step it prints the equivalent command (cd OUT_DIR &&
    fundus ...), so any step can be rerun or changed by hand; OUT_DIR/demo.json records the steps,
    their times and the verdicts.

    Running it again skips finished steps (outputs that exist and are newer than their inputs) and
    resumes an interrupted training run, so Ctrl-C loses little. A non-empty folder that is not a demo,
    or a demo made with other settings, is refused unless --force, which redoes every step. A privacy
    audit that FAILs does not stop the demo: the verdict is printed and shown in the report, and the
    exit code stays 0.

    Example: fundus demo demo --n-photos 200 && open demo/report.html
    """
    def log(line: str) -> None:
        if not state["quiet"]:
            err.print(line, markup=False, highlight=False, soft_wrap=True)

    r = api.demo(api.DemoConfig(out=out_dir, n_photos=n_photos, size=size, quick=quick, archs=tuple(archs.split(",")),
                                seed=seed, device=device, force=force), log=log)
    say(f"demo finished in {r.seconds / 60:.1f} min; wrote {r.summary}")
    for arch, verdict in r.verdicts.items():
        say(f"privacy audit of the {arch.upper()} samples: {verdict}")
    emit(r.report, {"report": r.report, "summary": r.summary, "verdicts": r.verdicts, "seconds": round(r.seconds, 1),
                     "steps": {s["name"]: {"status": s["status"], "seconds": s["seconds"]} for s in r.steps}}, as_json)
