"""Synthetic fictitious-author facts (TOFU-like), generated in-process and deterministic.

* ``n_authors`` fictitious authors (names: two tokens from 48 x 48 name pieces) plus
  ``n_holdout`` authors that are never trained on (membership-inference negatives);
* 10 attributes per author from closed vocabularies (birth city, birth year (two tokens:
  century, year), genre, award, father's job, mother's job, language, pet, colour, publisher);
* two question templates (paraphrases) per fact, both trained:
  A: ``<bos> NAME attr ? -> ANSWER <eos>``   B: ``<bos> what is attr of NAME ? -> ANSWER <eos>``;
* world facts: 60 cities -> 15 countries (two templates);
* a general skill: a + b for a, b < 50 (digits as tokens), 80% of the pairs trained, 20% held
  out to measure utility on unseen inputs;
* an answer *wording* ``-> namely ANSWER`` that is trained only on the general data (world facts
  and the trained additions, beside their plain wording), never on an author: TOFU's
  paraphrased answers.  The author questions in that wording (``author_para``, template A) are
  evaluation-only: TOFU's truth ratio compares the paraphrased correct answer with perturbed
  answers in the same wording (``author_para_perturbed``), and only a model that learned the
  wording as general language, and the fact itself, prefers the correct one.  ``namely`` is
  part of the prompt, not of the scored answer: scoring it would ask the position after ``->``
  to predict ``namely`` in one row and the answer in the same question's plain row — a
  contradiction no model can fit (until 2026-12-02 it was scored: training accuracy stalled at
  0.86, world facts at 0.58, and every model ran all 80 epochs).

Every sequence becomes ``(input_ids, labels)`` of length ``MAX_LEN`` with ``labels[t]`` the
target for position t (already shifted) and -100 everywhere except the answer tokens — the
CausalLM objective's masking convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["FactsData", "Vocab", "make_facts", "MAX_LEN", "ATTRIBUTES"]

MAX_LEN = 13
IGNORE = -100

ATTRIBUTES = {  # name: (vocabulary size, answer length in tokens)
    "city": (30, 1),
    "year": (None, 2),  # century token (3) + two-digit token (100)
    "genre": (12, 1),
    "award": (10, 1),
    "father": (15, 1),
    "mother": (15, 1),
    "language": (10, 1),
    "pet": (10, 1),
    "colour": (10, 1),
    "publisher": (10, 1),
}


class Vocab:
    def __init__(self):
        self.tok: dict[str, int] = {}

    def add(self, name: str) -> int:
        if name not in self.tok:
            self.tok[name] = len(self.tok)
        return self.tok[name]

    def __getitem__(self, name: str) -> int:
        return self.tok[name]

    def __len__(self):
        return len(self.tok)


@dataclass
class FactsData:
    vocab: Vocab
    # per question: input_ids / labels (MAX_LEN), plus bookkeeping
    author_q: dict        # template -> (ids (A*10, L), labels (A*10, L)); rows author-major
    author_answers: list  # per (author, attribute): list of answer token ids
    author_perturbed: list  # per (author, attribute): list of wrong answers (lists of ids)
    author_of_row: np.ndarray  # (A*10,) author index of each question row
    holdout_q: dict       # template -> (ids, labels) of the never-trained authors
    world_q: dict         # template -> (ids, labels)
    world_answers: list
    world_perturbed: list
    add_train: tuple      # (ids, labels)
    add_test: tuple
    add_test_answers: list
    add_test_perturbed: list
    n_authors: int
    # TOFU's paraphrased answers (``-> namely ANSWER``): evaluation-only for the authors
    author_para: tuple = None           # (ids, labels) per author question, template A, rows as author_q
    author_para_perturbed: list = None  # per question: the perturbed answers (scored after ``namely``)
    general_para: tuple = None          # (ids, labels): world facts and trained additions, trained


def _encode(tokens: list[int], answer_len: int) -> tuple[list[int], list[int]]:
    """tokens = prompt + answer + [eos]; returns (input_ids, labels) padded to MAX_LEN."""
    ids = tokens[:-1]
    labels = [IGNORE] * len(ids)
    n_prompt = len(tokens) - 1 - answer_len  # tokens before the answer
    # position t predicts tokens[t + 1]: score the positions whose next token is an answer token
    for t in range(n_prompt - 1, n_prompt - 1 + answer_len):
        labels[t] = tokens[t + 1]
    pad = MAX_LEN - len(ids)
    if pad < 0:
        raise ValueError("sequence longer than MAX_LEN")
    return ids + [0] * pad, labels + [IGNORE] * pad


def make_facts(seed: int = 0, n_authors: int = 200, n_holdout: int = 50, n_perturbed: int = 4) -> FactsData:
    rng = np.random.default_rng(seed)
    v = Vocab()
    for s in ("<pad>", "<bos>", "<eos>", "?", "->", "what", "is", "of", "+", "=", "country"):
        v.add(s)
    pieces_a = [v.add(f"na{i}") for i in range(48)]
    pieces_b = [v.add(f"nb{i}") for i in range(48)]
    attr_tok = {a: v.add(f"attr_{a}") for a in ATTRIBUTES}
    values = {}
    for a, (size, _) in ATTRIBUTES.items():
        if a == "year":
            continue
        values[a] = [v.add(f"{a}_{i}") for i in range(size)]
    centuries = [v.add(f"c{c}") for c in (18, 19, 20)]
    yy = [v.add(f"y{i:02d}") for i in range(100)]
    digits = [v.add(f"d{i}") for i in range(10)]
    cities = [v.add(f"wcity_{i}") for i in range(60)]
    countries = [v.add(f"wcountry_{i}") for i in range(15)]
    namely = v.add("namely")  # last, so every other token id is unchanged by the wording
    bos, eos, q, arrow, what, is_, of, plus, eq, country = (v[s] for s in ("<bos>", "<eos>", "?", "->", "what", "is", "of", "+", "=", "country"))

    total = n_authors + n_holdout
    name_pairs = rng.permutation(48 * 48)[:total]
    names = [[pieces_a[p // 48], pieces_b[p % 48]] for p in name_pairs]

    def answer(a: str) -> list[int]:
        if a == "year":
            return [centuries[rng.integers(3)], yy[rng.integers(100)]]
        return [values[a][rng.integers(len(values[a]))]]

    def perturb(a: str, ans: list[int]) -> list[list[int]]:
        out = []
        while len(out) < n_perturbed:
            cand = answer(a)
            if cand != ans and cand not in out:
                out.append(cand)
        return out

    def templates(name: list[int], atok: int, ans: list[int]):
        a = _encode([bos, *name, atok, q, arrow, *ans, eos], len(ans))
        b = _encode([bos, what, is_, atok, of, *name, q, arrow, *ans, eos], len(ans))
        return a, b

    qa = {"A": ([], []), "B": ([], [])}
    hq = {"A": ([], []), "B": ([], [])}
    para = ([], [])
    answers, perturbed, author_of_row = [], [], []
    for ai in range(total):
        for a in ATTRIBUTES:
            ans = answer(a)
            ta, tb = templates(names[ai], attr_tok[a], ans)
            dest = qa if ai < n_authors else hq
            for key, t in (("A", ta), ("B", tb)):
                dest[key][0].append(t[0])
                dest[key][1].append(t[1])
            if ai < n_authors:
                answers.append(ans)
                perturbed.append(perturb(a, ans))
                author_of_row.append(ai)
                tp = _encode([bos, *names[ai], attr_tok[a], q, arrow, namely, *ans, eos], len(ans))
                para[0].append(tp[0])
                para[1].append(tp[1])

    world = {"A": ([], []), "B": ([], [])}
    gpara = ([], [])
    w_answers, w_perturbed = [], []
    for ci, c in enumerate(cities):
        ans = [countries[rng.integers(len(countries))]]
        ta = _encode([bos, c, country, q, arrow, *ans, eos], 1)
        tb = _encode([bos, what, is_, country, of, c, q, arrow, *ans, eos], 1)
        for key, t in (("A", ta), ("B", tb)):
            world[key][0].append(t[0])
            world[key][1].append(t[1])
        for t in (_encode([bos, c, country, q, arrow, namely, *ans, eos], 1),
                  _encode([bos, what, is_, country, of, c, q, arrow, namely, *ans, eos], 1)):
            gpara[0].append(t[0])
            gpara[1].append(t[1])
        w_answers.append(ans)
        w_perturbed.append([[x] for x in rng.choice([k for k in countries if k != ans[0]], n_perturbed, replace=False)])

    pairs = [(a, b) for a in range(50) for b in range(50)]
    order = rng.permutation(len(pairs))
    n_train = int(0.8 * len(pairs))
    add_tr, add_te, add_te_ans, add_te_pert = ([], []), ([], []), [], []

    def num(x: int) -> list[int]:
        return [digits[x // 10], digits[x % 10]]

    for rank, idx in enumerate(order):
        a, b = pairs[idx]
        s = a + b
        ans = num(s)  # a + b <= 98: two digits
        t = _encode([bos, *num(a), plus, *num(b), eq, *ans, eos], len(ans))
        dest = add_tr if rank < n_train else add_te
        dest[0].append(t[0])
        dest[1].append(t[1])
        if rank < n_train:  # every trained addition also in the ``namely`` wording
            tp = _encode([bos, *num(a), plus, *num(b), eq, namely, *ans, eos], len(ans))
            gpara[0].append(tp[0])
            gpara[1].append(tp[1])
        if rank >= n_train:
            add_te_ans.append(ans)
            pert = []
            for d in (1, -1, 10, -10, 2, -2):
                w = s + d
                if 0 <= w < 100 and len(pert) < n_perturbed:
                    pert.append(num(w))
            add_te_pert.append(pert)

    def T(pair):
        return torch.tensor(pair[0], dtype=torch.long), torch.tensor(pair[1], dtype=torch.long)

    return FactsData(
        vocab=v,
        author_q={k: T(qa[k]) for k in qa},
        author_answers=answers,
        author_perturbed=perturbed,
        author_of_row=np.array(author_of_row),
        holdout_q={k: T(hq[k]) for k in hq},
        world_q={k: T(world[k]) for k in world},
        world_answers=w_answers,
        world_perturbed=w_perturbed,
        add_train=T(add_tr),
        add_test=T(add_te),
        add_test_answers=add_te_ans,
        add_test_perturbed=add_te_pert,
        n_authors=n_authors,
        author_para=T(para),
        author_para_perturbed=[[list(p) for p in ps] for ps in perturbed],
        general_para=T(gpara),
    )
