"""Preference data: the SPA-VL mini set round-trips through ``datasets``; SPA-VL and text JSONL loaders give
LLaVA prompts, class filters match a direct count, and every malformed row is named (or skipped and counted)."""

from __future__ import annotations

import io
import json
import pickle

import datasets
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mova.data import spavl_mini
from mova.data.preference import (
    PreferenceDataset,
    SafetyQuestion,
    load_preferences,
    load_spavl,
    load_spavl_test,
    load_text_preferences,
)
from mova.errors import DataError

SIZES = {"train": 40, "validation": 36, "harm": 18, "help": 18}
SPLITS = (("default", "train"), ("validation", "validation"), ("test", "harm"), ("test", "help"))


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("spavl")
    folder = spavl_mini.write_spavl_mini(
        root / "mini", n_train=SIZES["train"], n_validation=SIZES["validation"], n_test_per_split=SIZES["harm"], seed=3
    )
    return folder, root / "hf-cache"


def _table(folder, split):
    rel = next(r for _, s, r in spavl_mini.FILES if s == split)
    return pq.read_table(folder / rel).to_pydict()


def _harmful(question: str) -> bool:
    return any(t.text in question for t in spavl_mini.tasks(True))


# --- the mini set -------------------------------------------------------------------------------------
@pytest.mark.parametrize("config,split", SPLITS)
def test_mini_round_trips_through_load_dataset(mini, config, split):
    folder, cache = mini
    ds = datasets.load_dataset(str(folder), config, split=split, cache_dir=str(cache))
    assert ds.column_names == list(spavl_mini.FEATURES[config])
    assert ds.num_rows == SIZES[split]
    assert isinstance(ds.features["image"], datasets.Image)
    row = ds[0]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (128, 128)
    assert isinstance(row["question"], str) and row["question"].strip()


def test_mini_taxonomy_has_spavl_shape():
    class2 = [c2 for cat2 in spavl_mini.TAXONOMY.values() for c2 in cat2]
    assert len(spavl_mini.TAXONOMY) == 6 and len(class2) == len(set(class2)) == 13
    harmful, benign = spavl_mini.tasks(True), spavl_mini.tasks(False)
    assert len(harmful) == len(benign) == 3 * 18
    # _harmful() below tells the two apart by task text: no benign question may contain a harmful task.
    benign_questions = [q for qs in spavl_mini.question_pool(False, held_out=False).values() for _, q in qs]
    assert not any(_harmful(q) for q in benign_questions)


def test_mini_content_teaches_refuse_harmful_help_benign(mini):
    folder, _ = mini
    for split in ("train", "validation"):
        t = _table(folder, split)
        harmful = [_harmful(q) for q in t["question"]]
        assert sum(harmful) == (len(harmful) + 1) // 2  # half harmful, half benign
        for q, c, r, h in zip(t["question"], t["chosen"], t["rejected"], harmful):
            refuses_c = c.startswith(spavl_mini.REFUSAL_PREFIXES)
            refuses_r = r.startswith(spavl_mini.REFUSAL_PREFIXES)
            assert refuses_c == h, (q, c)
            if h:
                assert r.startswith(spavl_mini.COMPLIANCE_PREFIXES), (q, r)
            else:
                assert refuses_r or r in spavl_mini.DISMISSIVE_ANSWERS, (q, r)
            assert all(4 <= len(a.split()) <= 15 for a in (c, r)), (c, r)
    train_q = set(_table(folder, "train")["question"]) | set(_table(folder, "validation")["question"])
    for split, want_harmful in (("harm", True), ("help", False)):
        t = _table(folder, split)
        assert all(_harmful(q) == want_harmful for q in t["question"])
        assert not set(t["question"]) & train_q  # held-out phrasings, never a verbatim training question
        assert len(set(t["question"])) == len(t["question"])
        assert len(set(t["class1"])) == 6 and set(t["class1"]) == set(spavl_mini.TAXONOMY)


def test_mini_is_deterministic_given_the_seed(tmp_path):
    def tables(seed, name):
        out = spavl_mini.write_spavl_mini(tmp_path / name, n_train=6, n_validation=4, n_test_per_split=3, seed=seed)
        return [pq.read_table(out / rel) for _, _, rel in spavl_mini.FILES]

    a, b, c = tables(1, "a"), tables(1, "b"), tables(2, "c")
    assert all(x.equals(y) for x, y in zip(a, b))
    assert not all(x.equals(y) for x, y in zip(a, c))


def test_mini_cli(tmp_path, capsys):
    spavl_mini.main([str(tmp_path / "cli"), "--n-train", "5", "--n-validation", "3", "--n-test-per-split", "2"])
    assert pq.read_table(tmp_path / "cli/data/train-00000-of-00001.parquet").num_rows == 5
    assert json.loads((tmp_path / "cli/meta.json").read_text())["sizes"]["harm"] == 2
    assert "wrote SPA-VL mini" in capsys.readouterr().out


# --- load_spavl / load_spavl_test ---------------------------------------------------------------------
def test_load_spavl_pairs(mini):
    folder, cache = mini
    ds = load_spavl(str(folder), cache_dir=cache)
    assert isinstance(ds, PreferenceDataset) and len(ds) == SIZES["train"]
    t = _table(folder, "train")
    for i in (0, len(ds) - 1):
        p = ds[i]
        assert p.index == i and p.id == t["image_name"][i] == p.meta["image_name"]
        assert p.prompt == [{"from": "human", "value": "<image>\n" + t["question"][i]}]
        assert (p.chosen, p.rejected) == (t["chosen"][i], t["rejected"][i])
        assert p.image.mode == "RGB" and p.image.size == (128, 128)
        assert p.conversation("rejected")[-1] == {"from": "gpt", "value": p.rejected}
    assert ds.summary() | {"source": None} == {
        "source": None,
        "config": "default",
        "split": "train",
        "limit": None,
        "filters": {},
        "rows": SIZES["train"],
        "filtered_out": 0,
        "kept": SIZES["train"],
        "skipped": 0,
        "skipped_by_reason": {},
    }
    again = pickle.loads(pickle.dumps(ds))  # DataLoader workers under spawn
    assert again[3].image.tobytes() == ds[3].image.tobytes()

    val = load_spavl(str(folder), "validation", limit=5, cache_dir=cache)
    v = _table(folder, "validation")
    assert len(val) == 5 and val.ids[0] == "spavl/validation/validation:0"
    assert [(p.meta["class1"], p.meta["class2"], p.meta["class3"]) for p in val] == list(
        zip(v["class1"], v["class2"], v["class3"])
    )[:5]


@pytest.mark.parametrize(
    "filters",
    [
        {"class1": "Malicious Use"},
        {"class1": ["Malicious Use", "Socioeconomic Harms"]},
        {"class1": "Malicious Use", "class2": "Security Threats"},
        {"class3": ["Scams", "Theft", "Weapons"]},
    ],
)
def test_class_filters_match_a_direct_count(mini, filters):
    folder, cache = mini
    df = pq.read_table(folder / "validation/validation-00000-of-00001.parquet").to_pandas()
    mask = True
    for col, values in filters.items():
        mask = mask & df[col].isin([values] if isinstance(values, str) else values)
    expected = [i for i, keep in enumerate(mask) if keep]
    assert expected  # the filter must select something for the test to mean anything
    ds = load_spavl(str(folder), "validation", cache_dir=cache, **filters)
    assert [p.index for p in ds] == expected
    assert ds.summary()["filtered_out"] == SIZES["validation"] - len(expected)
    harm = pq.read_table(folder / "test/harm-00000-of-00001.parquet").to_pandas()
    hmask = True
    for col, values in filters.items():
        hmask = hmask & harm[col].isin([values] if isinstance(values, str) else values)
    if hmask.any():
        assert [q.index for q in load_spavl_test(str(folder), "harm", cache_dir=cache, **filters)] == [
            i for i, keep in enumerate(hmask) if keep
        ]


def test_filters_need_class_columns_and_known_values(mini):
    folder, cache = mini
    with pytest.raises(DataError, match=r"cannot filter on class1.*'image_name'.*'validation' and 'test'"):
        load_spavl(str(folder), class1="Malicious Use", cache_dir=cache)
    with pytest.raises(DataError, match="no row matches.*Malicious Use"):
        load_spavl(str(folder), "validation", class1="Malicious use", cache_dir=cache)  # note the case
    with pytest.raises(DataError, match="load_spavl_test"):
        load_spavl(str(folder), "test", cache_dir=cache)


def test_load_spavl_test(mini):
    folder, cache = mini
    for split in ("harm", "help"):
        qs = load_spavl_test(str(folder), split, cache_dir=cache)
        t = _table(folder, split)
        assert len(qs) == SIZES[split] and all(isinstance(q, SafetyQuestion) and q.split == split for q in qs)
        q = qs[1]
        assert q.id == f"spavl/test/{split}:1" and q.question == t["question"][1]
        assert q.prompt() == [{"from": "human", "value": "<image>\n" + t["question"][1]}]
        assert (q.meta["class1"], q.meta["class3"]) == (t["class1"][1], t["class3"][1])
        assert q.image.mode == "RGB"
    assert len(load_spavl_test(str(folder), "help", limit=4, cache_dir=cache)) == 4
    text_only = SafetyQuestion("x", 0, "What is 2 + 2?", None, "help")
    assert text_only.prompt() == [{"from": "human", "value": "What is 2 + 2?"}]
    with pytest.raises(DataError, match="harm"):
        load_spavl_test(str(folder), "train", cache_dir=cache)


def test_hub_id_offline_says_to_pass_a_local_folder(tmp_path):
    with pytest.raises(DataError, match="pass that folder as the source"):
        load_spavl("no-such-org/no-such-spavl", cache_dir=tmp_path)


# --- malformed SPA-VL rows ----------------------------------------------------------------------------
def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _spavl_rows(n: int = 5) -> list[dict]:
    return [
        {
            "image": {"bytes": _png(), "path": f"img{i}.jpg"},
            "question": f"What is in picture {i}?",
            "chosen": f"A green square number {i}.",
            "rejected": "I don't know.",
            "image_name": f"img{i}.jpg",
        }
        for i in range(n)
    ]


def _write_train(folder, rows, features=None) -> str:
    """A local SPA-VL copy without a dataset card: the loader falls back to the hub's file layout."""
    spavl_mini.write_parquet(
        rows, features or spavl_mini.FEATURES["default"], folder / "data/train-00000-of-00001.parquet"
    )
    return str(folder)


BAD_SPAVL_ROWS = {
    "missing field 'question'": {"question": None},
    "empty chosen": {"chosen": "   \n"},
    "empty rejected": {"rejected": ""},
    "chosen == rejected": {"chosen": "Same answer.", "rejected": "  Same answer. "},
    "undecodable image": {"image": {"bytes": b"\x89PNG but not really", "path": "img2.jpg"}},
    "missing field 'image'": {"image": None},
}


@pytest.mark.parametrize("reason", list(BAD_SPAVL_ROWS))
def test_malformed_spavl_row_is_named_or_skipped(tmp_path, reason):
    rows = _spavl_rows()
    rows[2].update(BAD_SPAVL_ROWS[reason])
    src = _write_train(tmp_path, rows)
    with pytest.raises(DataError) as err:
        load_spavl(src, cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert "row 2 " in msg and "'img2.jpg'" in msg and reason in msg and src in msg and "skip_invalid" in msg
    assert (err.value.index, err.value.id, err.value.reason) == (2, "img2.jpg", reason)

    ds = load_spavl(src, skip_invalid=True, cache_dir=tmp_path / "c")
    assert [p.index for p in ds] == [0, 1, 3, 4]
    assert ds.skipped == [(2, "img2.jpg", reason)]
    s = ds.summary()
    assert (s["rows"], s["kept"], s["skipped"], s["skipped_by_reason"]) == (5, 4, 1, {reason: 1})


def test_limit_counts_kept_pairs(tmp_path):
    rows = _spavl_rows(6)
    rows[1]["chosen"] = ""
    ds = load_spavl(_write_train(tmp_path, rows), limit=3, skip_invalid=True, cache_dir=tmp_path / "c")
    assert [p.index for p in ds] == [0, 2, 3] and ds.summary()["skipped"] == 1


def test_missing_column_names_the_columns(tmp_path):
    features = datasets.Features({k: v for k, v in spavl_mini.FEATURES["default"].items() if k != "rejected"})
    rows = [{k: v for k, v in r.items() if k != "rejected"} for r in _spavl_rows(2)]
    with pytest.raises(DataError, match=r"missing column\(s\) \['rejected'\].*'image_name'"):
        load_spavl(_write_train(tmp_path, rows, features), cache_dir=tmp_path / "c")


def test_unverified_bad_image_is_named_when_decoded(tmp_path):
    rows = _spavl_rows(3)
    rows[1]["image"] = {"bytes": b"garbage", "path": "img1.jpg"}
    src = _write_train(tmp_path, rows)
    ds = load_spavl(src, verify_images="none", cache_dir=tmp_path / "c")
    assert len(ds) == 3 and ds[0].image is not None
    with pytest.raises(DataError, match=r"row 1 \(id 'img1.jpg'\): undecodable image"):
        ds[1]
    with pytest.raises(DataError, match="row 1 .*undecodable image"):
        load_spavl(src, verify_images="full", cache_dir=tmp_path / "c")


# --- text preference files ----------------------------------------------------------------------------
def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_text_plain_and_conversational(tmp_path):
    path = _jsonl(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No.", "source_task": "greet"},
            "",  # blank lines are not rows
            {
                "id": "conv-1",
                "prompt": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4"},
                    {"role": "user", "content": "And 3+3?"},
                ],
                "chosen": [{"role": "assistant", "content": "6"}],
                "rejected": [{"role": "assistant", "content": "7"}],
            },
        ],
    )
    ds = load_text_preferences(path)
    a, b = ds[0], ds[1]
    assert (a.id, a.index, a.prompt, a.chosen, a.rejected, a.image) == (
        "prefs:0",
        0,
        [{"from": "human", "value": "Say hi."}],
        "Hi!",
        "No.",
        None,
    )
    assert a.meta == {"source_task": "greet", "source": str(path)}
    assert (b.id, b.index) == ("conv-1", 1)
    assert b.prompt == [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "2+2?"},
        {"from": "gpt", "value": "4"},
        {"from": "human", "value": "And 3+3?"},
    ]
    assert (b.chosen, b.rejected) == ("6", "7")
    assert b.conversation()[-1] == {"from": "gpt", "value": "6"}
    assert ds.summary()["rows"] == 2 and ds.summary()["kept"] == 2
    as_json = tmp_path / "prefs.json"
    as_json.write_text(json.dumps([{"prompt": "Q", "chosen": "A", "rejected": "B"}]), encoding="utf-8")
    assert [p.chosen for p in load_preferences(str(as_json))] == ["A"]
    assert load_preferences(path, limit=1).ids == ["prefs:0"]


GOOD = {"prompt": "Question?", "chosen": "Good answer.", "rejected": "Bad answer."}
BAD_TEXT_ROWS = {
    "invalid JSON": '{"prompt": "unterminated',
    "missing field 'chosen'": {"prompt": "Q?", "rejected": "R."},
    "missing field 'prompt'": {"chosen": "C.", "rejected": "R."},
    "empty rejected": {**GOOD, "rejected": " \t"},
    "empty chosen": {**GOOD, "chosen": [{"role": "assistant", "content": ""}]},
    "chosen == rejected": {**GOOD, "rejected": "Good answer.  "},
    "malformed prompt": {**GOOD, "prompt": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
    "malformed chosen": {
        **GOOD,
        "chosen": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
    },
    "malformed row": [1, 2, 3],
}


@pytest.mark.parametrize("reason", list(BAD_TEXT_ROWS))
def test_malformed_text_row_is_named_or_skipped(tmp_path, reason):
    path = _jsonl(tmp_path / "p.jsonl", [GOOD, {**GOOD, "id": "row-one"}, BAD_TEXT_ROWS[reason], GOOD])
    with pytest.raises(DataError) as err:
        load_text_preferences(path)
    msg = str(err.value)
    assert str(path) in msg and "row 2 (id 'p:2')" in msg and reason in msg and "line 3" in msg
    ds = load_text_preferences(path, skip_invalid=True)
    assert ds.ids == ["p:0", "row-one", "p:3"]
    assert ds.skipped == [(2, "p:2", reason)] and ds.summary()["skipped_by_reason"] == {reason: 1}


def test_system_message_only_first(tmp_path):
    row = {
        **GOOD,
        "id": "s",
        "prompt": [
            {"role": "user", "content": "Q"},
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Q2"},
        ],
    }
    with pytest.raises(DataError, match=r"row 0 \(id 's'\): malformed prompt: line 1: a system message"):
        load_text_preferences(_jsonl(tmp_path / "p.jsonl", [row]))


def test_text_image_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "imgs/a.png")
    (tmp_path / "secret.png").write_bytes(_png())
    data = tmp_path / "sub"
    data.mkdir()
    (data / "imgs").mkdir()
    Image.new("L", (20, 10), 128).save(data / "imgs/a.png")
    multimodal = {
        "id": "mm",
        "image": "imgs/a.png",
        "chosen": "Grey.",
        "rejected": "Red.",
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
    }
    ds = load_text_preferences(_jsonl(data / "ok.jsonl", [{**GOOD, "image": "imgs/a.png"}, multimodal]))
    assert ds[0].prompt == [{"from": "human", "value": "<image>\nQuestion?"}]
    assert ds[0].image.mode == "RGB" and ds[0].image.size == (20, 10) and ds[0].meta["image_path"] == "imgs/a.png"
    assert ds[1].prompt == [{"from": "human", "value": "<image>\nColour?"}]  # no second placeholder added
    for rel, reason in (
        ("../secret.png", "image path refused"),
        (str(tmp_path / "secret.png"), "image path refused"),
        ("imgs/../../secret.png", "image path refused"),
        ("imgs/none.png", "missing image file"),
    ):
        path = _jsonl(data / "bad.jsonl", [GOOD, {**GOOD, "image": rel}])
        with pytest.raises(DataError, match=rf"row 1 \(id 'bad:1'\): {reason}"):
            load_text_preferences(path)
        assert load_text_preferences(path, skip_invalid=True).skipped == [(1, "bad:1", reason)]
    with pytest.raises(DataError, match="placeholder but no 'image'"):
        load_text_preferences(_jsonl(data / "ph.jsonl", [{**GOOD, "prompt": "<image>\nWhat?"}]))


def test_dispatch_and_missing_sources(mini, tmp_path):
    folder, cache = mini
    assert load_preferences(str(folder), config="validation", limit=2, cache_dir=cache).summary()["kept"] == 2
    with pytest.raises(DataError, match="not found"):
        load_preferences(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no usable preference pairs"):
        load_text_preferences(_jsonl(tmp_path / "empty.jsonl", []))


def test_two_folders_with_the_same_name_load_their_own_rows(tmp_path):
    """Offline, `datasets.load_dataset(folder)` can hand back another same-named folder's cached copy."""
    from mova.data.preference import load_spavl
    from mova.data.spavl_mini import write_spavl_mini

    a = write_spavl_mini(tmp_path / "a" / "spavl", n_train=5, n_validation=2, n_test_per_split=2)
    b = write_spavl_mini(tmp_path / "b" / "spavl", n_train=9, n_validation=2, n_test_per_split=2)
    assert (len(load_spavl(str(a))), len(load_spavl(str(b)))) == (5, 9)


def test_mini_set_intent_is_in_disjoint_verb_sets():
    """The tiny demo model can only learn intent from a few words: harmful and benign tasks must start
    with verbs from their own closed sets and never use the other side's."""
    from mova.data.spavl_mini import BENIGN_VERBS, HARMFUL_VERBS, tasks

    for harmful, own, other in ((True, HARMFUL_VERBS, BENIGN_VERBS), (False, BENIGN_VERBS, HARMFUL_VERBS)):
        for task in tasks(harmful):
            assert task.text.startswith(tuple(f"{v} " for v in own)), task.text
            assert not any(f" {v} " in f" {task.text} " for v in other), task.text
