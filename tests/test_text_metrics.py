"""Text metrics, grammar backends and paired statistics: known values, identities, planted answers."""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats

from mspgt.errors import MspgtError
from mspgt.interventions import text_metrics as tm
from mspgt.interventions.grammar import HarperChecker, LanguageToolChecker, make_grammar_checker
from mspgt.interventions.paired_stats import brittleness, compare_paired, relative_change_pct

# -- Self-BLEU, type-token ratio, sentence-length variance ----------------------------------------------


def test_self_bleu_of_identical_samples_is_100():
    sample = "The government said on Monday that the new rules would apply from April."
    assert tm.self_bleu([sample] * 4) == pytest.approx(100.0)


def test_self_bleu_of_disjoint_samples_is_near_zero():
    samples = ["alpha beta gamma delta epsilon", "one two three four five", "red green blue cyan magenta"]
    assert tm.self_bleu(samples) < 1.0


def test_self_bleu_orders_similarity():
    base = "the bank raised interest rates again on thursday"
    similar = [base, "the bank raised interest rates again on friday", base.replace("again", "once more")]
    varied = [base, "shares fell in early trading in tokyo", "the film won three awards at the ceremony"]
    assert tm.self_bleu(similar) > tm.self_bleu(varied)


def test_self_bleu_needs_two_samples_and_is_nan_when_all_empty():
    with pytest.raises(ValueError):
        tm.self_bleu(["only one"])
    assert np.isnan(tm.self_bleu(["", " "]))


def test_type_token_ratio_known_values():
    assert tm.type_token_ratio(["the cat saw the dog"]) == pytest.approx(4 / 5)
    assert tm.type_token_ratio(["a a a a", "b c"]) == pytest.approx((1 / 4 + 1) / 2)
    assert tm.type_token_ratio(["The the THE"]) == pytest.approx(1 / 3)  # case folded
    assert tm.type_token_ratio(["", "x y"]) == pytest.approx(1.0)  # empty samples skipped
    assert np.isnan(tm.type_token_ratio(["", "..."]))


def test_sentence_split_and_length_variance_known_values():
    assert tm.sentences('One two three. "Four five!" Six') == ["One two three.", '"Four five!"', "Six"]
    # lengths 3, 2 and 4 -> population variance 2/3
    assert tm.sentence_length_variance(
        ["One two three. Four five.", "Six seven eight nine."]
    ) == pytest.approx(2 / 3)
    assert tm.sentence_length_variance(["Same length here.", "Also three words."]) == 0.0
    assert np.isnan(tm.sentence_length_variance(["", "  "]))


def test_words_keep_inner_apostrophes():
    assert tm.words("Don't stop, it's 3 o'clock!") == ["don't", "stop", "it's", "3", "o'clock"]


# -- SBERT coherence ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sbert():
    return tm.load_sbert("packaged", "cpu")


def test_coherence_higher_for_related_than_unrelated(sbert):
    prompt = "The central bank raised interest rates by half a point on Thursday"
    related = "to curb inflation, which has climbed to its highest level in a decade, economists said."
    unrelated = "and the striker scored twice as the home side won the cup final in extra time."
    scores = sbert.coherence([prompt, prompt], [[related], [unrelated]])
    assert scores[0] > scores[1] + 0.1
    assert -1.0 <= scores[1] < scores[0] <= 1.0


def test_coherence_means_over_samples_and_skips_empty(sbert):
    prompt = "Oil prices rose sharply on Monday"
    cont = "after producers agreed to cut output."
    one = sbert.coherence([prompt], [[cont]])[0]
    assert sbert.coherence([prompt], [[cont, ""]])[0] == pytest.approx(one, abs=1e-6)
    assert np.isnan(sbert.coherence([prompt], [["", ""]])[0])


# -- grammar backends -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def harper_checker():
    return HarperChecker("en-US")


def test_harper_counts_known_mistakes(harper_checker):
    assert harper_checker.count_errors("He go to school yesterday.") >= 1
    assert harper_checker.count_errors("This is a a test.") >= 1
    assert harper_checker.count_errors("She walked to the station and caught the early train.") == 0


def test_grammar_counts_only_errors_in_the_continuation(harper_checker):
    prompt = "This is a a test"
    assert tm.grammar_errors_per_word(harper_checker, prompt, ["and the results were clear."]) == 0.0
    rate = tm.grammar_errors_per_word(harper_checker, "The pupils said", ["he go to school every day."])
    assert rate == pytest.approx(1 / 6)


def test_grammar_backend_is_recorded_and_ignore_kinds_works():
    checker = make_grammar_checker(
        OmegaConf.create({"backend": "harper", "language": "en-US", "ignore_kinds": []})
    )
    assert checker.name == "harper" and "harper-py" in checker.detail
    text = "They visited the colour museum."
    us = HarperChecker("en-US")
    assert us.count_errors(text) >= 1  # British spelling under en-US
    assert HarperChecker("en-GB").count_errors(text) == 0
    assert HarperChecker("en-US", ignore_kinds=["Spelling"]).count_errors(text) == 0


def test_unknown_grammar_backend_is_a_clear_error():
    with pytest.raises(MspgtError, match="grammar backend"):
        make_grammar_checker(OmegaConf.create({"backend": "grammarly", "language": "en-US"}))


class _StubLanguageTool(BaseHTTPRequestHandler):
    """A LanguageTool HTTP API stand-in: one TYPOS-free GRAMMAR match at every ' go '."""

    def log_message(self, *args):
        pass

    def _json(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/v2/languages"):
            self._json([{"name": "English (US)", "code": "en", "longCode": "en-US"}])
        else:
            self.send_error(404)

    def do_POST(self):
        form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        text = form["text"][0]
        matches, at = [], text.find(" go ")
        while at >= 0:
            matches.append(
                {
                    "message": "agreement",
                    "shortMessage": "",
                    "replacements": [{"value": "goes"}],
                    "offset": at + 1,
                    "length": 2,
                    "context": {"text": text, "offset": at + 1, "length": 2},
                    "sentence": text,
                    "rule": {
                        "id": "HE_VERB_AGR",
                        "issueType": "grammar",
                        "category": {"id": "GRAMMAR", "name": "Grammar"},
                    },
                }
            )
            at = text.find(" go ", at + 1)
        self._json({"matches": matches})


@pytest.fixture()
def stub_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubLanguageTool)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_languagetool_backend_counts_server_matches(stub_server):
    checker = LanguageToolChecker("en-US", url=stub_server)
    try:
        assert checker.name == "languagetool" and stub_server in checker.detail
        text = "He go to school and they go home."
        assert checker.count_errors(text) == 2
        assert checker.count_errors(text, start=text.index("and")) == 1
        assert LanguageToolChecker("en-US", url=stub_server, ignore_kinds=["GRAMMAR"]).count_errors(text) == 0
    finally:
        checker.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_languagetool_server_that_refuses_is_a_clear_error():
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(MspgtError, match="does not answer") as err:
        LanguageToolChecker("en-US", url=url, timeout_s=2)
    assert "backend=harper" in err.value.fix


def test_languagetool_server_that_hangs_is_a_clear_error():
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        with pytest.raises(MspgtError, match="does not answer"):
            LanguageToolChecker("en-US", url=f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.5)


def test_languagetool_needs_a_url_or_a_path(tmp_path):
    with pytest.raises(MspgtError, match="exactly one"):
        LanguageToolChecker("en-US")
    with pytest.raises(MspgtError, match="no LanguageTool"):
        LanguageToolChecker("en-US", path=str(tmp_path))


# -- paired statistics ----------------------------------------------------------------------------------


def test_baseline_against_itself_gives_zero_change():
    values = np.array([0.2, 0.5, 0.9, 0.4])
    c = compare_paired(values, values.copy())
    assert (c.relative_change_pct, c.t, c.p, c.cohens_dz) == (0.0, 0.0, 1.0, 0.0)
    assert c.n == 4 and c.n_dropped == 0


def test_paired_test_matches_scipy_and_planted_shift():
    rng = np.random.default_rng(0)
    clean = rng.normal(10.0, 1.0, 50)
    noised = clean + 2.0 + rng.normal(0.0, 0.5, 50)
    c = compare_paired(clean, noised)
    ref = stats.ttest_rel(noised, clean)
    assert c.t == pytest.approx(ref.statistic) and c.p == pytest.approx(ref.pvalue)
    diff = noised - clean
    assert c.cohens_dz == pytest.approx(diff.mean() / diff.std(ddof=1))
    assert c.relative_change_pct == pytest.approx((noised.mean() - clean.mean()) / clean.mean() * 100)
    lo, hi = c.relative_change_ci95
    assert lo < c.relative_change_pct < hi and lo > 0
    assert c.significant(0.05)


def test_relative_change_sign_uses_the_absolute_clean_mean():
    assert relative_change_pct(-2.0, -1.0) == pytest.approx(50.0)
    assert relative_change_pct(2.0, 1.0) == pytest.approx(-50.0)
    assert np.isnan(relative_change_pct(0.0, 1.0))


def test_nan_prompts_are_dropped_pairwise():
    c = compare_paired(np.array([1.0, np.nan, 3.0, 4.0]), np.array([2.0, 5.0, np.nan, 5.0]))
    assert c.n == 2 and c.n_dropped == 2
    assert c.clean_mean == pytest.approx(2.5) and c.noised_mean == pytest.approx(3.5)


def test_brittleness_is_mean_absolute_relative_change():
    comps = {
        "a": compare_paired(np.array([1.0, 1.0]), np.array([1.1, 1.1])),  # +10%
        "b": compare_paired(np.array([2.0, 2.0]), np.array([1.4, 1.4])),  # -30%
    }
    assert brittleness(comps, ["a", "b"]) == pytest.approx(20.0)
    assert brittleness(comps, ["b"]) == pytest.approx(30.0)


def test_a_text_harper_cannot_lint_is_left_out_not_a_crash(harper_checker):
    """harper-core 2.13 panics on some texts (a noised SmolLM2 continuation ending in "both 20" found it); pyo3
    raises the panic as PanicException, a BaseException that used to end the whole sweep."""
    panics = 'But the most recent, "The Monsters" and "The Mothrafter" were both 20'
    fine = "She walked to the station and caught the early train."
    before = harper_checker.unreadable
    assert harper_checker.count_errors(panics) is None
    assert harper_checker.unreadable == before + 1
    # the unreadable sample is left out of both counts: the prompt's value is the readable samples' rate
    assert tm.grammar_errors_per_word(harper_checker, "Prompt:", [panics, "He go to school yesterday."]) == (
        tm.grammar_errors_per_word(harper_checker, "Prompt:", ["He go to school yesterday."]))
    assert np.isnan(tm.grammar_errors_per_word(harper_checker, "Prompt:", [panics]))
    assert tm.grammar_errors_per_word(harper_checker, "Prompt:", [panics, fine]) == 0.0
