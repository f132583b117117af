"""The embedded default's data files and the validated readers."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignray.config import DataConfig
from alignray.data.prompts import (DEMONSTRATION_SCHEMA, PROMPT_SCHEMA, prepare_embedded_data, read_demonstrations,
                           read_prompts)
from alignray.data.tweets import clean_tweet, split_opening
from alignray.data.validation import DataValidationError


def test_clean_tweet_drops_handles_links_and_mojibake():
    raw = "RT @WSJ: I just don't trust #driverless cars_\xd1_.no thank you http://t.co/x &amp; more"
    assert clean_tweet(raw) == "I just don't trust #driverless cars .no thank you & more"


def test_split_opening():
    assert split_opening("one two three four five six", 4) == ("one two three four", "five six")


@pytest.fixture(scope="module")
def embedded_files(tmp_path_factory):
    return prepare_embedded_data(DataConfig(), tmp_path_factory.mktemp("data"))


def test_embedded_files_have_declared_schemas_and_disjoint_splits(embedded_files):
    train = pq.read_table(embedded_files["demonstrations_train"])
    heldout = pq.read_table(embedded_files["demonstrations_heldout"])
    assert train.schema.equals(DEMONSTRATION_SCHEMA)
    assert pq.read_table(embedded_files["prompts_train"]).schema.equals(PROMPT_SCHEMA)
    assert train.num_rows > 20_000 and 500 < heldout.num_rows < 0.1 * train.num_rows
    texts = lambda t: {p + " " + r for p, r in zip(t["prompt"].to_pylist(), t["response"].to_pylist())}
    assert not texts(train) & texts(heldout)
    assert all(len(p.split()) == 4 for p in train["prompt"].to_pylist()[:500])
    table, report = read_prompts(embedded_files["prompts_heldout"])
    assert report.rows_in == report.accepted == heldout.num_rows


def test_min_confidence_filters_low_agreement_tweets(tmp_path):
    all_rows = pq.read_metadata(prepare_embedded_data(DataConfig(), tmp_path / "a")["demonstrations_train"]).num_rows
    confident = pq.read_metadata(
        prepare_embedded_data(DataConfig(min_confidence=0.9), tmp_path / "b")["demonstrations_train"]).num_rows
    assert 0 < confident < all_rows


def test_empty_and_overlong_rows_are_counted_not_dropped_silently(tmp_path):
    path = tmp_path / "demos.parquet"
    pq.write_table(pa.table({"prompt": ["hello there", "  ", "fine"], "response": ["ok then", "x", "y" * 50]}), path)
    table, report = read_demonstrations(path, max_chars=20)
    assert (report.rows_in, report.accepted, report.rejected) == (3, 1, 2)
    assert table["prompt"].to_pylist() == ["hello there"]
    assert "row 1, field 'prompt': empty text" in "\n".join(map(str, report.errors))
    assert "row 2, field 'response': over-long" in "\n".join(map(str, report.errors))


def test_malformed_demonstrations_file_names_file_and_field(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "answer": ["x", "y"]}), path)
    with pytest.raises(DataValidationError, match=r"bad\.parquet.*field 'response': required column is missing"):
        read_demonstrations(path)
    path2 = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"prompt": ["a", None], "response": ["x", "y"]}), path2)
    with pytest.raises(DataValidationError, match=r"nulls\.parquet, row 1, field 'prompt'"):
        read_demonstrations(path2)
