"""LLaVA data: label masks, path safety, bad records named by id and index, skipping, batching order."""

from __future__ import annotations

import json

import pytest
import torch

from mova.config import DataConfig
from mova.data.llava import (
    BadRecordError,
    LlavaDataset,
    ModalityLengthGroupedSampler,
    MovaCollator,
    read_records,
)
from mova.model.builder import build_mova_config, load_tokenizer
from mova.model.processing_mova import MovaProcessor
from mova.model.templates import render
from tests.conftest import tiny_model_config
from tests.llava_fixtures import write_llava_dataset


@pytest.fixture(scope="module")
def processor():
    cfg = tiny_model_config()
    tok = load_tokenizer(cfg)
    return MovaProcessor(tok, build_mova_config(cfg, tok))


@pytest.fixture
def data(tmp_path):
    return write_llava_dataset(tmp_path, n=6, text_only=2)


def _ds(processor, path, template="vicuna_v1", **kw):
    cfg = DataConfig(data_path=str(path), image_folder=str(path.parent), **kw)
    return LlavaDataset(read_records(path), processor, cfg, template, progress=False)


@pytest.mark.parametrize("template", ["plain", "vicuna_v1"])
def test_labels_cover_exactly_the_assistant_turns(processor, data, template):
    ds = _ds(processor, data, template)
    for i in (0, len(ds) - 1):  # one image record, one text-only record
        item = ds[i]
        rec = ds.records[ds.items[i].index]
        targets = [s.text for s in render(template, rec["conversations"], processor.tokenizer) if s.is_target]
        labelled = item["labels"][item["labels"] != -100]
        assert processor.tokenizer.decode(labelled) == "".join(targets)
        image_tokens = item["input_ids"] == processor.image_token_id
        assert (item["labels"][image_tokens] == -100).all()
        assert image_tokens.sum() == processor.layout.num_tokens() * len(ds.items[i].images)


def _write(path, records):
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize("image,match", [
    ("/etc/passwd", "absolute image path"),
    ("../outside.png", "escapes the image folder"),
    ("images/../../outside.png", "escapes the image folder"),
    ("images/missing.png", "missing image"),
])
def test_bad_paths_are_refused_with_id_and_index(processor, data, image, match):
    records = read_records(data)
    records[3]["image"] = image
    with pytest.raises(BadRecordError, match=rf"record 3 \(id 'img-3'\): .*{match}"):
        _ds(processor, _write(data, records))


def test_unreadable_image_no_assistant_turn_and_too_long(processor, data):
    (data.parent / "images" / "002.png").write_bytes(b"not a png at all")
    with pytest.raises(BadRecordError, match=r"record 2 \(id 'img-2'\): unreadable image"):
        _ds(processor, data)
    records = read_records(data)
    records[2]["conversations"] = [{"from": "human", "value": "<image>\nhi"}]
    records[1]["conversations"][1]["value"] = "word " * 400
    path = _write(data, records)
    with pytest.raises(BadRecordError, match=r"record 1 \(id 'img-1'\): too long"):
        _ds(processor, path)
    records[1]["conversations"][1]["value"] = "fine"
    with pytest.raises(BadRecordError, match=r"record 2 \(id 'img-2'\): no assistant turn"):
        _ds(processor, _write(data, records))


def test_skip_mode_logs_and_counts(processor, data, caplog):
    records = read_records(data)
    records[0]["image"] = "../x.png"
    records[4]["conversations"] = [{"from": "human", "value": "<image>\nhi"}]
    ds = _ds(processor, _write(data, records), skip_bad_records=True)
    assert len(ds) == len(records) - 2
    assert [(s.index, s.id) for s in ds.skipped] == [(0, "img-0"), (4, "img-4")]
    assert "skipping record 0" in caplog.text


def test_summary_counts_skips_by_reason_not_by_message(processor, data):
    from mova.data.llava import dataset_summary

    records = read_records(data)
    for i in (0, 1, 2):  # three missing files: one reason, three messages
        records[i]["image"] = f"images/gone-{i}.png"
    records[3]["conversations"] = [{"from": "human", "value": "<image>\nhi"}]
    ds = _ds(processor, _write(data, records), skip_bad_records=True)
    assert dataset_summary(ds)["skipped_by_reason"] == {"missing image": 3, "no assistant turn": 1}


def test_image_that_fails_at_load_time_is_skipped_when_asked(processor, data, caplog):
    """With verify_images=false a corrupt file is only found when training reaches it: skip_bad_records then
    replaces the sample (and reports it) instead of ending the run; without it the error names the record."""
    (data.parent / "images" / "002.png").write_bytes(b"not a png at all")
    ds = _ds(processor, data, verify_images=False, skip_bad_records=True)
    assert len(ds) == 8  # nothing found before training
    item = ds[2]
    assert item["index"] == 3 and "skipping record 2" in caplog.text  # the next usable sample instead
    assert [(s.index, s.kind) for s in ds.skipped] == [(2, "unreadable image")]
    assert ds[2]["index"] == 3 and len(ds.skipped) == 1  # not retried
    strict = _ds(processor, data, verify_images=False)
    with pytest.raises(BadRecordError, match=r"record 2 \(id 'img-2'\).*skip_bad_records"):
        strict[2]


def test_image_folder_defaults_to_the_data_files_folder(processor, data):
    cfg = DataConfig(data_path=str(data))
    ds = LlavaDataset(read_records(data), processor, cfg, "vicuna_v1", progress=False)
    assert ds.items[0].images[0] == (data.parent / "images" / "000.png").resolve()


def test_collator_pads_right_and_concatenates_images(processor, data):
    ds = _ds(processor, data)
    batch = MovaCollator(processor.tokenizer.pad_token_id)([ds[0], ds[len(ds) - 1], ds[1]])
    assert batch["images"]["clip"].shape[0] == 2  # the text-only sample brings no image
    lengths = batch["attention_mask"].sum(-1)
    assert lengths[1] < batch["input_ids"].shape[1] and batch["attention_mask"][1, 0] == 1
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_grouped_sampler_is_deterministic_and_groups_modalities():
    lengths = [5, 50, 7, 40, 9, 30, 11, 20, 3, 60]
    has_image = [True, True, True, True, True, True, False, False, False, False]
    s = ModalityLengthGroupedSampler(lengths, has_image, global_batch_size=2, seed=3)
    order = list(s)
    assert sorted(order) == list(range(10)) and order == list(s)
    for k in range(0, 10, 2):
        pair = order[k:k + 2]
        assert has_image[pair[0]] == has_image[pair[1]]
        assert lengths[pair[0]] >= lengths[pair[1]]
    s.set_epoch(1)
    assert list(s) != order
    assert torch.equal(torch.tensor(list(ModalityLengthGroupedSampler(lengths, has_image, 2, seed=3))),
                       torch.tensor(order))
