"""The Hugging Face callback with a real ``Trainer`` on a tiny BERT built from a config (no
download): one run whose history equals what the callback's ``on_log`` received (named as W&B
names them), the model config and ``TrainingArguments`` as config, checkpoints as artifacts."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import trackside
from trackside.integration.transformers import TracksideCallback, rewrite


class Recording(TracksideCallback):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.received = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.received.append((state.global_step, dict(logs)))
        super().on_log(args, state, control, logs=logs, **kwargs)


class Data(torch.utils.data.Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(n)
        self.ids = torch.randint(0, 50, (n, 6), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(6, dtype=torch.long), "labels": self.labels[i]}


def test_trainer_logs_one_run_equal_to_what_on_log_received(ts, tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    model = transformers.BertForSequenceClassification(config)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=2,
        per_device_train_batch_size=4,
        logging_steps=1,
        eval_strategy="epoch",
        save_strategy="epoch",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        learning_rate=1e-3,
        run_name="tiny-bert",
    )
    callback = Recording(project="hf", log_checkpoints="end")
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Data(16), eval_dataset=Data(8), callbacks=[callback]
    )
    trainer.train()
    assert callback.run.finished

    r = trackside.Api(ts.root).run(callback.run.id)
    want = {}
    for step, logs in callback.received:
        want.setdefault(step, {}).update(rewrite(logs))
    rows = {row["_step"]: {k: v for k, v in row.items() if not k.startswith("_")} for row in r.history()}
    assert rows == want
    assert "train/loss" in rows[1] and "eval/loss" in rows[4] and "train/train_runtime" in rows[8]
    assert r.name == "tiny-bert" and r.project == "hf"
    assert r.config["hidden_size"] == 16 and r.config["learning_rate"] == 1e-3 and r.config["report_to"] == []
    (art,) = r.logged_artifacts()
    assert art.name == f"checkpoint-{r.id}" and "model.safetensors" in art.entries


def test_rewrite_names_and_bad_arguments():
    assert rewrite({"loss": 1.0, "eval_loss": 2.0, "test_acc": 0.5, "epoch": 1, "note": "x"}) == {
        "train/loss": 1.0,
        "eval/loss": 2.0,
        "test/acc": 0.5,
        "train/epoch": 1,
    }
    with pytest.raises(trackside.UsageError, match="log_checkpoints='best'"):
        TracksideCallback(log_checkpoints="best")
