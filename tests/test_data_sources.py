"""User corpora (data.sources): a run on webdataset + Parquet + JSONL files made here; bad ones refused."""
from __future__ import annotations

from pathlib import Path

import pytest

from mm1model import records
from mm1model.config import ConfigError, to_dict
from mm1model.train import main, train
from mm1model.data.writers import write_caption_shards, write_interleaved, write_text_docs

from test_data import _colour
from test_train import corpus, small  # noqa: F401 (corpus is a fixture)


def _user_files(root: Path) -> dict[str, list[str]]:
    """A user's corpus laid out as users lay theirs out: not a prepared corpus directory."""
    write_caption_shards(root / "laion", "part", ((f"cap-{i}", _colour(i), f"a swatch of colour {i}")
                                                  for i in range(60)))
    write_interleaved(root / "obelics" / "docs.parquet",
                      ((f"doc-{i}", [f"colour number {i}", _colour(i), "was shown above"], {}) for i in range(30)))
    write_text_docs(root / "web.jsonl", ((f"web-{i}", f"plain text document {i}. " * 5) for i in range(30)))
    return {"caption": [str(root / "laion" / "*.tar")], "interleaved": [str(root / "obelics")],
            "text": [str(root / "web.jsonl")]}


def _config(corpus: str, run_dir: Path, sources: dict):  # noqa: F811
    # equal weights: the 12 held-out sequences hold every source (MM1's 10% text might give none)
    return small(corpus, run_dir, steps=3, warmup_steps=1, eval_interval=0, eval_sequences=12, checkpoint_interval=0,
                 data={"corpus": corpus, "seq_len": 128, "sources": sources,
                       "mixture": {"caption": 1, "interleaved": 1, "text": 1}})


def test_a_run_trains_on_user_webdataset_parquet_and_jsonl_files(corpus, tmp_path):  # noqa: F811
    sources = _user_files(tmp_path / "user")
    result = train(_config(corpus, tmp_path / "run", sources))
    assert result.status == "ok" and result.steps == 3
    assert set(result.val_loss_by_source) == {"caption", "interleaved", "text"}  # all three were read
    recorded = records.read_json(tmp_path / "run" / "config.json")["data"]["sources"]
    assert recorded["caption"] == sources["caption"]


@pytest.mark.parametrize("change,message", [
    ({"caption": ["{root}/nowhere/*.tar"]}, r"^data.sources.caption: .*/nowhere/\*.tar holds no webdataset .tar shards$"),
    ({"text": ["{root}/missing.jsonl"]}, r"^data.sources.text: .*/missing.jsonl does not exist$"),
    ({"interleaved": ["{root}/web.jsonl", "{root}/notes.csv"]}, r"notes.csv is not one of the interleaved formats"),
    ({"caption": ["{root}/fake.tar"]}, r"^source caption has 0 records in split train of data.sources.caption "
                                       r"\(1 files\), fewer than the 1 streams \(skipped while indexing: "
                                       r"\{'truncated_tar': 1\}\)$"),
    ({"interleaved": ["{root}/table.parquet"]}, r"^/.*/table.parquet has no texts or images column \(its columns: id, "
                                                r"body\); an interleaved .parquet needs OBELICS' texts\[\] and images\[\] "
                                                r"\(id optional\)$"),
    # a wrong field name: refused at start-up from the first record, not once packing reaches it
    ({"text": ["{root}/web.jsonl", "{root}/content.jsonl"]}, r'^/.*/content.jsonl: line 2 has no text field \(its '
                                                           r'fields: id, content\); a text .jsonl needs \{"text": '
                                                           r'...\} on each line$'),
    ({"interleaved": ["{root}/web.jsonl"]}, r"^/.*/web.jsonl: line 1 has no texts or images field \(its fields: id, "
                                           r"text\); an interleaved .jsonl needs"),

    ({"text": []}, r"^data.mixture gives text a weight but data.sources.text names no files"),
])
def test_a_missing_empty_or_unknown_user_corpus_is_one_line_before_training(corpus, tmp_path, change, message):  # noqa: F811
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "user"
    sources = _user_files(root)
    (root / "notes.csv").write_text("a,b\n")
    (root / "fake.tar").write_bytes(b"not a tar at all" * 100)
    pq.write_table(pa.table({"id": ["x"], "body": ["no OBELICS columns"]}), root / "table.parquet")
    (root / "content.jsonl").write_text('\n{"id": "c1", "content": "a body under another name"}\n')
    sources.update({k: [p.format(root=root) for p in v] for k, v in change.items()})
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        train(_config(corpus, run_dir, sources))
    assert not run_dir.exists() or not any(run_dir.iterdir())  # refused before anything was written


def test_the_trainer_cli_refuses_a_bad_user_corpus_in_one_line(corpus, tmp_path, capsys):  # noqa: F811
    config = _config(corpus, tmp_path / "run", {"caption": [str(tmp_path / "absent")]})
    path = tmp_path / "config.json"
    records.write_json(path, to_dict(config))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: data.sources.caption:") and err[0].endswith("does not exist")
