"""Run by test_pretrain.py: 2-process DDP pretraining on CPU (gloo); each rank writes which
windows it trained on and a hash of its final weights."""

import hashlib
import json
import sys

import lightning as L

from brainlm.data.corpus import Corpus
from brainlm.data.windows import CorpusDataModule
from brainlm.model.config import preset
from brainlm.model.masking import MaskSpec
from brainlm.train.module import PretrainModule
from brainlm.train.trainer import TrainerSettings, make_trainer


class RecordRank(L.Callback):
    def __init__(self, out):
        self.out, self.seen = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen += [[r, s] for r, s in zip(batch["recording"].tolist(), batch["start"].tolist())]

    def on_train_end(self, trainer, pl_module):
        digest = hashlib.sha256()
        for _, p in sorted(pl_module.model.state_dict().items()):
            digest.update(p.detach().cpu().numpy().tobytes())
        with open(f"{self.out}/rank{trainer.global_rank}.json", "w") as f:
            json.dump({"seen": self.seen, "weights": digest.hexdigest(), "world": trainer.world_size}, f)


if __name__ == "__main__":
    corpus_path, out = sys.argv[1], sys.argv[2]
    L.seed_everything(0, workers=True, verbose=False)
    corpus = Corpus(corpus_path)
    module = PretrainModule(preset("tiny").to_dict(), MaskSpec().to_dict(), lr=1e-3,
                            contract=corpus.contract.to_dict(), atlas=corpus.atlas.to_dict())
    # The trainer every fit uses, on two CPU processes.
    trainer = make_trainer(TrainerSettings(1, accelerator="cpu", devices=2, strategy="ddp"),
                           limit_val_batches=0, callbacks=[RecordRank(out)]).trainer
    trainer.fit(module, datamodule=CorpusDataModule(corpus_path, batch_size=4, crops_per_recording=4))
