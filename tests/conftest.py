import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for every test process (xdist workers and the subprocesses
# that tests launch inherit it): the suite compiles the same tiny train steps many times over.
# jax's default threshold keeps it to programs that took a second or more to compile; caching
# every eager op as well made the suite slower, not faster.
# A size limit turns on jax's file lock, so concurrent processes never read a half-written entry.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), ".pytest_cache", "jax-compilation"))
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))
# Prepared token shards of the corpora tests train on (keyed by file, size and time: never stale).
os.environ.setdefault("JAXLM_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), ".pytest_cache", "jaxlm-data"))

# The tfds datasets tests build (build_local_tfds): one directory per test process, since tfds
# reads TFDS_DATA_DIR once per process.
os.environ["TFDS_DATA_DIR"] = tempfile.mkdtemp(prefix="jaxlm-tests-tfds-")
atexit.register(shutil.rmtree, os.environ["TFDS_DATA_DIR"], True)

import pytest  # noqa: E402

from jaxlm.host_memory import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as the jaxlm command does, before jax starts its CPU backend

TINY_MODEL = {"type": "gpt2", "vocab_size": 300, "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 4,
              "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def tiny_overrides(out_dir, **extra) -> list[str]:
    """Dotted overrides for a seconds-long gpt2 run on a small text file."""
    base = {
        "run.out_dir": str(out_dir),
        "data.seq_len": 16,
        "data.tokenizer.vocab_size": 300,
        "trainer.batch_size": 4,
        "trainer.max_steps": 6,
        "trainer.log_every": 2,
        "trainer.eval_every": 3,
        "trainer.eval_batches": 2,
        "trainer.progress_bar": False,
        "checkpoint.every": 3,
        "schedule.warmup_steps": 2,
        **{f"model.{k}": v for k, v in TINY_MODEL.items()},
    }
    base.update(extra)
    return [f"{k}={'null' if v is None else v}" for k, v in base.items()]


def small_corpus(directory):
    """``directory/corpus.txt``: the first six documents of the embedded corpus (for tiny runs)."""
    from jaxlm.data.corpus import embedded_corpus

    path = directory / "corpus.txt"
    path.write_text("\n".join(embedded_corpus()[:6]))
    return path


@pytest.fixture
def corpus_file(tmp_path):
    return small_corpus(tmp_path)


def build_local_tfds(dataset: str, examples: list[tuple[str, int]]) -> None:
    """Build the tfds dataset ``dataset`` (one ``train`` split of ``text`` / binary ``label``
    examples) in this test process's TFDS_DATA_DIR, as a user builds their own: no download."""
    import tensorflow_datasets as tfds

    class Builder(tfds.core.GeneratorBasedBuilder):
        name = dataset  # what tfds registers it as
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=2)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, (text, label) in enumerate(examples):
                yield i, {"text": text, "label": label}

    Builder(data_dir=os.environ["TFDS_DATA_DIR"], file_format="array_record").download_and_prepare()
