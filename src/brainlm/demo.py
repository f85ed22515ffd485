"""``brainlm demo``: the main job end to end on the real data shipped with the package.

Today: two corpora from real fMRI (7 HCP subjects on AAL2 at TR 0.72 s; one Schaefer-100 run at
TR 2 s resampled to 0.72 s) with subject-level splits and robust scaling fitted on the training
split; windows streamed through the Lightning data module; the ``tiny`` model pretrained on the
HCP training subjects and validated on a held-out subject against trivial baselines; and
deterministic embeddings from the exported checkpoint. Evaluation, forecasting, attention and
the HTML report plug in here as they land.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from brainlm.data.atlas import load_atlas
from brainlm.data.atomic import write_text_atomic
from brainlm.data.contract import PreprocessingContract
from brainlm.data.prepare import prepare_corpus
from brainlm.data.samples import HCP7_TR, load_hcp7_aal2, load_schaefer100_rest
from brainlm.data.windows import CorpusDataModule
from brainlm.tasks.embed import embed
from brainlm.train.pretrain import PretrainSettings, pretrain

WINDOW_TRS = 200


def run_demo(out: Path, jobs: int = 2, epochs: int = 40) -> dict:
    """Run the demo into ``out``; returns (and writes ``out/summary.json``) the key numbers."""
    from rich.console import Console

    from brainlm.cli import print_summary

    con = Console()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    contract = PreprocessingContract(target_tr=HCP7_TR, percent_signal_change=True)

    con.rule("[bold]1. HCP young adults (7 subjects, AAL2, TR 0.72 s) -> corpus")
    hcp = prepare_corpus(load_hcp7_aal2(), out / "corpus-hcp7-aal2", atlas=load_atlas("aal2"),
                         contract=contract, min_trs=WINDOW_TRS, jobs=jobs, overwrite=True, progress=True)
    print_summary(hcp.summary())

    con.rule("[bold]2. Schaefer-100 rest run (TR 2 s, confounds) -> resampled to TR 0.72 s")
    rest = load_schaefer100_rest()
    contract_rest = PreprocessingContract(
        target_tr=HCP7_TR, percent_signal_change=True, high_pass_hz=0.01,
        confounds=[c for c in rest.confounds.columns if c != "framewise_displacement"])
    s100 = prepare_corpus([rest], out / "corpus-schaefer100", atlas=load_atlas("schaefer100"),
                          contract=contract_rest, min_trs=WINDOW_TRS, jobs=1, overwrite=True)
    print_summary(s100.summary())

    con.rule(f"[bold]3. Windows of {WINDOW_TRS} TRs through the Lightning data module")
    dm = CorpusDataModule(hcp.path, window_trs=WINDOW_TRS, batch_size=16)
    train_batch = next(iter(dm.train_dataloader()))
    n_val = sum(b["window"].shape[0] for b in dm.val_dataloader())
    t = time.perf_counter()
    n_read = sum(b["window"].shape[0] for _ in range(5) for b in dm.train_dataloader())
    rate = n_read / (time.perf_counter() - t)
    w = train_batch["window"]
    con.print(f"train batch: window {tuple(w.shape)} (batch x TRs x parcels), xyz "
              f"{tuple(train_batch['xyz'].shape)}; scaled median {w.median():.3f}, "
              f"IQR {w.quantile(0.75) - w.quantile(0.25):.3f}")
    con.print(f"validation tiles: {n_val} windows (deterministic); training windows read at "
              f"{rate:.0f} windows/s")

    con.rule(f"[bold]4. Pretrain the tiny model on the HCP training subjects ({epochs} epochs, CPU)")
    run = out / "run-tiny"
    if run.exists():
        shutil.rmtree(run)
    t = time.perf_counter()
    metrics = pretrain(PretrainSettings(corpus=hcp.path, preset="tiny", epochs=epochs), run, progress=True)
    train_s = time.perf_counter() - t
    baseline = min(metrics["val/baseline_zero_mse"], metrics["val/baseline_mean_mse"])
    con.print(f"validation (held-out subject, 75% of tokens masked): masked MSE "
              f"{metrics['val/masked_mse']:.3f} vs {metrics['val/baseline_zero_mse']:.3f} for predicting "
              f"zero and {metrics['val/baseline_mean_mse']:.3f} for each parcel's visible mean; "
              f"R^2 {metrics['val/r2']:.3f} ({train_s:.0f} s)")

    con.rule("[bold]5. Embeddings from the checkpoint (deterministic)")
    first = embed(run / "model", [hcp.path], out / "embeddings.parquet")
    second = embed(run / "model", [hcp.path])
    identical = bool(first.equals(second))
    con.print(f"{len(first)} recordings x {sum(c.startswith('cls_') for c in first)} CLS dims -> "
              f"{out / 'embeddings.parquet'}; a second run is bit-identical: {identical}")

    summary = {
        "corpora": {"hcp7_aal2": hcp.summary(), "schaefer100": s100.summary()},
        "windows": {"window_trs": WINDOW_TRS, "val_tiles": n_val, "train_windows_per_s": round(rate, 1)},
        "pretraining": {"preset": "tiny", "epochs": epochs, "seconds": round(train_s, 1),
                        "validation": metrics, "beats_trivial_baselines": metrics["val/masked_mse"] < baseline},
        "embeddings": {"recordings": len(first), "deterministic": identical},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str))
    con.rule("[bold]done")
    con.print(f"Corpora, run and embeddings in {out.resolve()}; summary: "
              f"{(out / 'summary.json').resolve()} ({summary['seconds']} s). Evaluation against "
              "baselines, forecasting, attention maps and the HTML report are not implemented yet "
              "in this version.")
    return summary
