"""Secrets in URLs (util/urls.py): the forms a user gives redacted; the config as saved and printed, run.json and every
entry script's error and log lines show them redacted while the config in memory keeps them; a resume compares
redacted forms. A whole run folder and its output searched for the secret: e2e/test_remote_shards.py."""
import contextlib
import io
import logging
import sys
import warnings

import pytest
import yaml
from launches import train_main

from config import config_to_dict, config_to_yaml, load_config, with_overrides
from training.checkpoints import CheckpointRecord
from training.plan import identity_changes
from util.urls import RedactingFormatter, redact, redact_logging, redact_url

SECRET = "s3cr3t-Pa55"
TINY = "configs/tiny_cpu.yaml"


@pytest.mark.parametrize("url, shown", [
    ("http://me:s3cr3t-Pa55@host:8080/shards/", "http://me:***@host:8080/shards/"),
    ("https://s3cr3t-Pa55@host/shards/", "https://***@host/shards/"),  # a token as the user name
    ("http://me:s3cr3t@Pa55@host/shards/", "http://me:***@host/shards/"),  # an unescaped @ in the password
    ("https://bucket.s3.amazonaws.com/shards/manifest.json?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA"
     "s3cr3t-Pa55%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&"
     "X-Amz-SignedHeaders=host&X-Amz-Signature=s3cr3t-Pa55&X-Amz-Security-Token=s3cr3t-Pa55",
     "https://bucket.s3.amazonaws.com/shards/manifest.json?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***&"
     "X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=***&"
     "X-Amz-Security-Token=***"),
    ("https://host/shards/?token=s3cr3t-Pa55&n=1", "https://host/shards/?token=***&n=1"),
    ("https://host/shards/?sig=s3cr3t-Pa55#part", "https://host/shards/?sig=***#part"),
])
def test_each_form_of_secret_is_masked_and_the_rest_kept(url, shown):
    assert redact_url(url) == shown and SECRET not in shown and shown != url
    assert redact_url(shown) == shown  # redacting twice changes nothing: a saved value compares equal to itself


@pytest.mark.parametrize("url", ["s3://bucket/shards/", "http://127.0.0.1:8080/shards/?n=1", "/data/shards",
                                 "runs/demo/shards"])
def test_a_url_or_path_without_a_secret_is_left_as_it_is(url):
    assert redact_url(url) == url


def test_every_url_in_a_text_is_redacted():
    text = (f"http://me:{SECRET}@a/x/manifest.json: the server answered 403; (was 'https://b/y/?token={SECRET}') "
            f"at <s3://bucket/z/>")
    assert redact(text) == ("http://me:***@a/x/manifest.json: the server answered 403; (was 'https://b/y/?token=***') "
                            "at <s3://bucket/z/>")


# ----- the config: kept in memory, redacted when saved or printed
def secret_config():
    return load_config(TINY, overrides=[f"data.shards=http://me:{SECRET}@127.0.0.1:9/shards/",
                                        f"logging.probe_shards=https://host/probe/?token={SECRET}"])


def test_the_saved_config_is_redacted_and_the_one_in_memory_keeps_the_secret():
    cfg = secret_config()
    assert cfg.data.shards == f"http://me:{SECRET}@127.0.0.1:9/shards/"  # the process fetches with it
    saved = config_to_yaml(cfg)
    assert SECRET not in saved and SECRET not in str(config_to_dict(cfg))
    assert yaml.safe_load(saved)["data"]["shards"] == "http://me:***@127.0.0.1:9/shards/"
    assert yaml.safe_load(saved)["logging"]["probe_shards"] == "https://host/probe/?token=***"
    assert config_to_dict(cfg, secrets=True)["data"]["shards"] == cfg.data.shards
    assert with_overrides(cfg, ["optimization.lr=5e-4"]).data.shards == cfg.data.shards  # --set keeps it


def test_print_config_shows_the_url_redacted_also_in_why_the_steps_are_not_known(monkeypatch):
    import train

    keep_hooks(monkeypatch)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # nothing listens on port 9: the preview's fetch fails within 1 s
        code = train.main(["--config", TINY, "--print-config", "--set",
                           f"data.shards=http://me:{SECRET}@127.0.0.1:9/shards/", "--set", "data.fetch_timeout_s=1"])
    assert code == 0 and SECRET not in out.getvalue()
    assert "shards: http://me:***@127.0.0.1:9/shards/" in out.getvalue()
    assert "# derived: steps: not known until data.shards can be read (http://me:***@127.0.0.1:9/shards/" \
        in out.getvalue()


def test_run_json_holds_no_secret_and_a_resume_compares_redacted_forms():
    saved = {"data.batch_size": 16, "where": f"http://me:***@host/shards/"}
    assert identity_changes(saved, {**saved, "where": f"http://me:{SECRET}@host/shards/"}) == {}
    changes = identity_changes(saved, {**saved, "where": f"http://me:{SECRET}@other/shards/"})
    assert list(changes) == ["where"] and SECRET not in changes["where"]  # another host: still a change, named
    record = CheckpointRecord(2, 1, {"data.batch_size": 16}, (16, 1), 0, (0, 32), "id",
                              {"source": f"https://host/w.pth.tar?X-Amz-Signature={SECRET}"})
    assert SECRET not in record.to_json() and "X-Amz-Signature=***" in record.to_json()


# ----- the entry scripts' error and log lines
def keep_hooks(monkeypatch):
    """redact_logging sets process-wide hooks: the test's own are back afterwards."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)


def test_train_eval_and_shard_dataset_error_lines_are_redacted(monkeypatch, caplog, capsys, tmp_path):
    import eval as eval_cli
    import shard_dataset

    keep_hooks(monkeypatch)
    code, lines = train_main(["--config", TINY, "--set", f"data.shards=htps://me:{SECRET}@host/shards/"], caplog)
    assert code == 2 and len(lines) == 1 and "htps://me:***@host/shards/" in lines[0] and SECRET not in lines[0]
    code = eval_cli.main(["--checkpoint", str(tmp_path), "--train-shards", f"htps://me:{SECRET}@host/t/",
                          "--val-shards", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: --train-shards: htps://me:***@host/t/") and SECRET not in err
    with pytest.raises(SystemExit) as exit_:
        shard_dataset.main([str(tmp_path), str(tmp_path / "out"), "--upload", f"ftp://me:{SECRET}@host/up/"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "ftp://me:***@host/up/" in err and SECRET not in err


def test_log_lines_of_any_module_warnings_and_tracebacks_are_redacted(monkeypatch):
    from tqdm.contrib.logging import logging_redirect_tqdm

    keep_hooks(monkeypatch)
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    handler = logging.StreamHandler(sys.stderr)  # as train.py's basicConfig makes it
    handler.setFormatter(logging.Formatter("[rank 1] %(message)s"))
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
    redact_logging()
    redact_logging()  # the entry script's second main() in one process: wrapped once
    assert isinstance(handler.formatter, RedactingFormatter) and not isinstance(handler.formatter.inner,
                                                                                RedactingFormatter)
    url = f"http://me:{SECRET}@host/shards/shard-000001.tar"
    logging.getLogger("pipeline.remote.fetch").warning("%s: the server answered 503; try 2 in 0.5 s", url)
    try:
        raise OSError(f"cannot open {url}")
    except OSError:
        logging.getLogger("training.guard").exception("failed")  # a logged traceback
    with logging_redirect_tqdm():  # train.py's loop: tqdm's handler takes over the console handler's formatter
        logging.getLogger("training.progress").warning("reading %s", url)
    try:
        raise RuntimeError(url)
    except RuntimeError:
        sys.excepthook(*sys.exc_info())  # an uncaught exception's traceback
    lines = stderr.getvalue()
    assert lines.count("http://me:***@host/shards/shard-000001.tar") == 4 and SECRET not in lines, lines
    assert "[rank 1] reading http://me:***@" in lines and lines.count("Traceback") == 2
    assert SECRET not in warnings.formatwarning(f"slow: {url}", UserWarning, "x.py", 1)  # what warnings prints
