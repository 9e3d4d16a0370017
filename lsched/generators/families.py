"""Instance families: seeded generators that return a validated :class:`Instance`.

Every generator takes an explicit ``seed`` and draws from
``numpy.random.default_rng`` streams derived from it: same arguments, same
instance; no global RNG. The seed is split with ``SeedSequence(seed).spawn`` into
independent streams for arrivals, prompts, outputs (and a family's own draws), so
that changing one ingredient (say the arrival rate) leaves the others' draws
unchanged: two loads of the same workload differ only in their arrival times.

Every instance carries ``name``, ``family``, ``seed`` and ``params``. ``params``
holds the generator's keyword arguments, fully resolved and JSON-like (derived
values included, e.g. Jaillet's sampled KV capacity), so that
``regenerate(family, n=n, seed=seed, params=params, name=name)`` rebuilds it
exactly.

Families
--------
``synthetic`` (:func:`generate`)
    Any arrival process with independent prompt and output length distributions.
``jaillet`` (:func:`jaillet`)
    The synthetic instances of Jaillet et al. 2025.
``gsm8k`` (:func:`gsm8k`)
    GSM8K math word problems under an 8-shot chain-of-thought prompt, the workload
    of Pang et al. 2025.
``resample`` (:func:`resample`)
    (prompt, output) pairs bootstrapped jointly from an existing instance.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from lsched.checks import check_int, check_seed
from lsched.errors import InputError
from lsched.generators.arrivals import (
    AllAtZero,
    ArrivalProcess,
    Poisson,
    arrivals_from_params,
)
from lsched.generators.jaillet_convention import (
    check_convention,
    code_convention_draws,
)
from lsched.generators.lengths import LengthDistribution, LogNormal, length_from_params
from lsched.instance import Instance


def _streams(seed: int, count: int) -> list[np.random.Generator]:
    """``count`` independent generators derived from one seed."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(count)]


def _name(name: str | None, family: str, n: int, seed: int) -> str:
    return f"{family}-n{n}-s{seed}" if name is None else str(name)


# -- synthetic --------------------------------------------------------------------


def generate(
    n: int,
    *,
    prompt: LengthDistribution | Mapping[str, Any],
    output: LengthDistribution | Mapping[str, Any],
    seed: int,
    arrivals: ArrivalProcess | Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Instance:
    """Generate ``n`` requests with independent arrival, prompt and output draws.

    Parameters
    ----------
    n
        Number of requests, >= 1.
    prompt, output
        Length distributions (:mod:`lsched.generators.lengths`) or their
        ``to_params()`` dicts.
    seed
        Non-negative integer seed.
    arrivals
        Arrival process (:mod:`lsched.generators.arrivals`) or its dict; ``None``
        means every request at ``t = 0``.
    name
        Instance name; default ``synthetic-n{n}-s{seed}``.

    Returns
    -------
    Instance
        Family ``"synthetic"``; ``params`` = ``{"arrivals", "prompt", "output"}``
        as dicts.

    Examples
    --------
    >>> from lsched.generators import LogNormal, Poisson, generate
    >>> inst = generate(100, arrivals=Poisson(rate_per_s=2.0),
    ...                 prompt=LogNormal(median=512, sigma=1.0, max_tokens=4096),
    ...                 output=LogNormal(median=128, sigma=0.8), seed=0)
    >>> len(inst), inst.family
    (100, 'synthetic')
    """
    n = check_int(n, "n", 1)
    seed = check_seed(seed)
    process = arrivals_from_params(arrivals)
    prompt_dist = length_from_params(prompt, field="prompt")
    output_dist = length_from_params(output, field="output")
    rng_arrivals, rng_prompt, rng_output = _streams(seed, 3)
    return Instance(
        arrival_s=process.sample(n, rng_arrivals),
        prompt_tokens=prompt_dist.sample(n, rng_prompt),
        output_tokens=output_dist.sample(n, rng_output),
        name=_name(name, "synthetic", n, seed),
        family="synthetic",
        seed=seed,
        params={
            "arrivals": process.to_params(),
            "prompt": prompt_dist.to_params(),
            "output": output_dist.to_params(),
        },
    )


# -- Jaillet et al. 2025 ----------------------------------------------------------

#: Jaillet et al. 2025, synthetic experiments: KV capacity M ~ U{30..50}.
JAILLET_KV_CAPACITY_RANGE_TOKENS = (30, 50)
#: Jaillet et al. 2025, synthetic experiments: prompt size s ~ U{1..5}.
JAILLET_PROMPT_RANGE_TOKENS = (1, 5)


def jaillet(
    n: int,
    *,
    seed: int,
    arrivals: ArrivalProcess | Mapping[str, Any] | None = None,
    kv_capacity_tokens: int | None = None,
    convention: str = "lsched",
    name: str | None = None,
) -> Instance:
    """The synthetic family of Jaillet et al. 2025.

    P. Jaillet, J. Jiang, K. Mellou, M. Molinaro, C. Podimata, Z. Zhou, "Online
    Scheduling for LLM Inference with KV Cache Constraints", arXiv:2502.07115
    (2025), numerical experiments on synthetic data, where MC-SF is compared with
    the hindsight-optimal integer program (average latency ratio 1.005 with every
    request at time 0, 1.047 with online arrivals). Per instance:

    - KV capacity ``M ~ U{30, ..., 50}``, drawn once per instance;
    - per request ``i``: prompt ``s_i ~ U{1, ..., 5}``, then output
      ``o_i ~ U{1, ..., M - s_i}`` with that instance's ``M``;

    all bounds inclusive, draws independent. ``o_i <= M - s_i`` makes every
    request fit alone: its peak KV ``s_i + o_i - 1`` (DESIGN.md) is ``<= M - 1``.
    Arrivals: all at ``t = 0`` (the paper's first setting) or a Poisson process
    (its second); any process is accepted. The search tool reached the paper's
    abstract and result summaries but not the text of its experiment section, so
    the sampling above is the project issue's reading of that section, kept
    literally (inclusive bounds, ``o`` per request with the instance's ``M``).

    Parameters
    ----------
    n
        Number of requests, >= 1.
    seed
        Non-negative integer seed.
    arrivals
        Arrival process or its dict; ``None``: all at ``t = 0``.
    kv_capacity_tokens
        Use this ``M`` instead of the sampled one (an integer >= 6, so that
        ``M - s >= 1`` for every ``s`` in 1..5). ``M`` is still drawn from its
        stream and discarded, so the other draws do not change; passing the
        recorded ``M`` back therefore regenerates the same instance.
    convention
        ``"lsched"`` (default): the sampling above, in lsched's slot model.
        ``"jaillet"``: their released code's model, mapped exactly
        (:mod:`lsched.generators.jaillet_convention`, with the proof): one
        ``s ~ U{1..5}`` per instance, ``o_i ~ U{1..M - s}``, prompt ``s + 1``
        for every request, integer (floored) arrivals; slot-model latencies
        and optima are then theirs.
    name
        Instance name; default ``jaillet-n{n}-s{seed}``.

    Returns
    -------
    Instance
        Family ``"jaillet"``; ``params = {"arrivals": {...},
        "kv_capacity_tokens": M}``, plus ``"convention": "jaillet"`` in that
        convention (the default is not recorded, so that existing instances keep
        their params).
    """
    n = check_int(n, "n", 1)
    seed = check_seed(seed)
    process = arrivals_from_params(arrivals)
    convention = check_convention(convention)
    rng_arrivals, rng_prompt, rng_output, rng_capacity = _streams(seed, 4)
    m_low, m_high = JAILLET_KV_CAPACITY_RANGE_TOKENS
    s_low, s_high = JAILLET_PROMPT_RANGE_TOKENS
    capacity = int(rng_capacity.integers(m_low, m_high + 1))
    if kv_capacity_tokens is not None:
        capacity = check_int(kv_capacity_tokens, "kv_capacity_tokens", s_high + 1)
    arrival = process.sample(n, rng_arrivals)
    params = {"arrivals": process.to_params(), "kv_capacity_tokens": capacity}
    if convention == "jaillet":
        arrival, prompt, output = code_convention_draws(
            n, capacity, (s_low, s_high), arrival, rng_prompt, rng_output
        )
        params["convention"] = convention
    else:
        prompt = rng_prompt.integers(s_low, s_high + 1, size=n, dtype=np.int64)
        # o_i ~ U{1..M - s_i}: integers() takes a per-request (exclusive) upper end
        output = rng_output.integers(1, capacity - prompt + 1, dtype=np.int64)
    return Instance(
        arrival_s=arrival,
        prompt_tokens=prompt,
        output_tokens=output,
        name=_name(name, "jaillet", n, seed),
        family="jaillet",
        seed=seed,
        params=params,
    )


# -- GSM8K (Pang et al. 2025) -----------------------------------------------------

#: Tokens of the 8-shot chain-of-thought prompt of Wei et al. 2022 (GSM8K
#: exemplars): an estimate, derived in :func:`gsm8k`'s docstring.
GSM8K_FEW_SHOT_TOKENS = 680
#: Question tokens (with its "Q: ... A:" markers): an estimate, see :func:`gsm8k`.
GSM8K_QUESTION = LogNormal(median=80.0, sigma=0.35)
#: Generated chain-of-thought answer tokens: an estimate, see :func:`gsm8k`.
GSM8K_OUTPUT = LogNormal(median=75.0, sigma=0.45, max_tokens=256)


def gsm8k(
    n: int,
    *,
    seed: int,
    arrivals: ArrivalProcess | Mapping[str, Any] | None = None,
    few_shot_tokens: int = GSM8K_FEW_SHOT_TOKENS,
    question: LengthDistribution | Mapping[str, Any] = GSM8K_QUESTION,
    output: LengthDistribution | Mapping[str, Any] = GSM8K_OUTPUT,
    name: str | None = None,
) -> Instance:
    """GSM8K-like requests: an 8-shot CoT prompt plus a question; a CoT answer.

    The setting is that of B. Pang, K. Li, R. She, F. Wang, "Hybrid Offline-online
    Scheduling Method for Large Language Model Inference Optimization",
    arXiv:2502.15763 (2025): LLaMA-65B serving GSM8K math word problems on several
    clients, where their hybrid method cuts the makespan from 201.00 s to 190.58 s
    and raises utilisation from 80.2 % to 89.1 % (abstract; +8.0 % utilisation on
    average over a 100-case study). The search tool did not reach the paper's
    experiment section, so its number of requests and its prompt/output length
    figures are unknown here: ``n`` is a free parameter, arrivals default to all
    at ``t = 0`` (their offline batch), and lengths are estimated as follows.

    ``prompt = few_shot_tokens + question``, ``output ~ output``, independent.

    - **Few-shot prompt, 680 tokens** (estimate). The 8 GSM8K exemplars of Wei et
      al. 2022 ("Chain-of-thought prompting elicits reasoning in large language
      models", NeurIPS 2022, appendix prompts), as shipped in EleutherAI
      lm-evaluation-harness ``gsm8k-cot.yaml``, laid out as "Q: ...\\nA: ...":
      2,133 characters = 352 alphabetic words + 127 digits + 112 punctuation
      marks + 16 newlines (counted by us). The LLaMA tokenizer encodes each
      digit, punctuation mark and newline as its own token; at ~1.2 tokens per
      English word that is ``352 * 1.2 + 127 + 112 + 16 ~ 677``, rounded to 680
      (uncertain by roughly +-10 %; about 3.1 characters per token).
    - **Question, lognormal median 80 tokens, sigma 0.35** (estimate). GSM8K
      (Cobbe et al. 2021, "Training verifiers to solve math word problems") holds
      7,473 train and 1,319 test problems; its dataset card gives 3,963,202 and
      713,732 bytes of question + answer text, i.e. ~530 bytes per problem. We
      take about half (~250 bytes) for the question, ~80 tokens at the ratio
      above including its "Q:"/"A:" markers.
    - **Output, lognormal median 75 tokens, sigma 0.45, at most 256** (estimate).
      The other ~280 bytes are the reference solution, of which calculator
      annotations ``<<48/2=24>>`` (not generated by the model) are roughly a
      sixth: ~240 bytes, ~75 tokens of chain of thought ending "The answer is
      N.". The cap is lm-evaluation-harness's default generation limit
      (``max_gen_toks = 256``).
    - The sigmas are judgement calls, not measurements: solutions take 2 to 8
      steps (Cobbe et al.), a factor ~4 in length; reading that range as +-2
      sigma gives ``ln 4 / 4 ~ 0.35``; outputs get more (0.45) for the model's
      own verbosity.

    Parameters
    ----------
    n
        Number of requests, >= 1.
    seed
        Non-negative integer seed.
    arrivals
        Arrival process or its dict; ``None``: all at ``t = 0``.
    few_shot_tokens
        Tokens of the shared few-shot prefix, >= 0.
    question, output
        Length distributions (or dicts) of the question and the generated answer.
    name
        Instance name; default ``gsm8k-n{n}-s{seed}``.

    Returns
    -------
    Instance
        Family ``"gsm8k"``; ``params = {"arrivals", "few_shot_tokens",
        "question", "output"}``.
    """
    n = check_int(n, "n", 1)
    seed = check_seed(seed)
    few_shot = check_int(few_shot_tokens, "few_shot_tokens", 0)
    process = arrivals_from_params(arrivals)
    question_dist = length_from_params(question, field="question")
    output_dist = length_from_params(output, field="output")
    rng_arrivals, rng_prompt, rng_output = _streams(seed, 3)
    return Instance(
        arrival_s=process.sample(n, rng_arrivals),
        prompt_tokens=few_shot + question_dist.sample(n, rng_prompt),
        output_tokens=output_dist.sample(n, rng_output),
        name=_name(name, "gsm8k", n, seed),
        family="gsm8k",
        seed=seed,
        params={
            "arrivals": process.to_params(),
            "few_shot_tokens": few_shot,
            "question": question_dist.to_params(),
            "output": output_dist.to_params(),
        },
    )


# -- resampling from a trace ------------------------------------------------------


def lengths_digest(instance: Instance) -> str:
    """SHA-256 of an instance's (prompt, output) columns, as little-endian int64.

    Identifies the source of a resampled instance independently of its file
    format, so that regeneration can check it resamples from the same data.
    """
    digest = hashlib.sha256()
    for column in (instance.prompt_tokens, instance.output_tokens):
        digest.update(np.ascontiguousarray(column, dtype="<i8").tobytes())
    return digest.hexdigest()


def mean_rate_per_s(instance: Instance) -> float | None:
    """``(n - 1) / (last arrival - first arrival)``, or ``None`` for a zero span."""
    span = float(instance.arrival_s[-1] - instance.arrival_s[0])
    return (len(instance) - 1) / span if span > 0 else None


def resample(
    source: Instance,
    n: int,
    *,
    seed: int,
    arrivals: ArrivalProcess | Mapping[str, Any] | None = None,
    keep_source_rate: bool = True,
    source_label: str | None = None,
    name: str | None = None,
) -> Instance:
    """Bootstrap ``n`` (prompt, output) pairs jointly from ``source``.

    Rows are drawn uniformly with replacement and each keeps its own prompt and
    output together, so the joint law of the source, correlation included, is
    preserved; other columns are not carried over.

    Parameters
    ----------
    source
        The instance to resample, e.g. a real trace read with
        ``lsched.traces.read_trace``.
    n
        Number of requests, >= 1.
    seed
        Non-negative integer seed.
    arrivals
        Arrival process or its dict. ``None`` with ``keep_source_rate``: a
        Poisson process at the source's mean rate ``(n_src - 1) / span`` (all at
        ``t = 0`` if its span is zero); ``None`` otherwise: all at ``t = 0``.
    keep_source_rate
        See ``arrivals``.
    source_label
        What to record as ``params["source"]``, normally the path the source was
        read from (what :func:`regenerate` reads back); default
        ``source.source``, else ``source.name``.
    name
        Instance name; default ``resample-n{n}-s{seed}``.

    Returns
    -------
    Instance
        Family ``"resample"``; ``params = {"arrivals", "source", "source_n",
        "source_digest"}`` where ``source`` is the source's file (or name) and
        ``source_digest`` is :func:`lengths_digest` of it.

    Examples
    --------
    Rows stay paired: with outputs ``2 * prompt`` in the source, every drawn
    request keeps ``o = 2 s``.

    >>> from lsched.instance import Instance
    >>> src = Instance(arrival_s=[0.0, 1.0, 2.0], prompt_tokens=[1, 2, 3],
    ...                output_tokens=[2, 4, 6])
    >>> inst = resample(src, 6, seed=0)
    >>> bool((inst.output_tokens == 2 * inst.prompt_tokens).all())
    True
    """
    if not isinstance(source, Instance):
        raise InputError(
            f"got {type(source).__name__}; expected an Instance", field="source"
        )
    n = check_int(n, "n", 1)
    seed = check_seed(seed)
    if arrivals is None and keep_source_rate:
        rate = mean_rate_per_s(source)
        process = AllAtZero() if rate is None else Poisson(rate_per_s=rate)
    else:
        process = arrivals_from_params(arrivals)
    if source_label is None:
        source_label = source.source if source.source is not None else source.name
    rng_arrivals, rng_rows = _streams(seed, 2)
    rows = rng_rows.integers(0, len(source), size=n)
    return Instance(
        arrival_s=process.sample(n, rng_arrivals),
        prompt_tokens=source.prompt_tokens[rows],
        output_tokens=source.output_tokens[rows],
        name=_name(name, "resample", n, seed),
        family="resample",
        seed=seed,
        params={
            "arrivals": process.to_params(),
            "source": str(source_label),
            "source_n": len(source),
            "source_digest": lengths_digest(source),
        },
    )


# -- regeneration -----------------------------------------------------------------

FAMILIES: tuple[str, ...] = ("synthetic", "jaillet", "gsm8k", "resample")


def regenerate(
    family: str,
    *,
    n: int,
    seed: int,
    params: Mapping[str, Any],
    name: str | None = None,
    source: Instance | None = None,
) -> Instance:
    """Rebuild an instance from its recorded family, size, seed and params.

    Parameters
    ----------
    family, n, seed, params, name
        As recorded on a generated :class:`Instance` (or in a manifest).
    source
        For family ``"resample"``: the source instance. When omitted it is read
        from ``params["source"]`` with ``lsched.traces.read_trace``. Its
        :func:`lengths_digest` must match ``params["source_digest"]``.

    Raises
    ------
    InputError
        For an unknown family, params the family does not take, or a resample
        source that is not the recorded one.
    """
    params = dict(params)
    if family == "synthetic":
        call = generate
    elif family == "jaillet":
        call = jaillet
    elif family == "gsm8k":
        call = gsm8k
    elif family == "resample":
        return _regenerate_resample(
            n=n, seed=seed, params=params, name=name, source=source
        )
    else:
        raise InputError(
            f"got {family!r}; expected one of {list(FAMILIES)}", field="family"
        )
    try:
        return call(n, seed=seed, name=name, **params)
    except TypeError as exc:  # a key the family does not take
        raise InputError(
            f"params do not fit family {family!r}: {exc}", field="params"
        ) from None


def _regenerate_resample(
    *,
    n: int,
    seed: int,
    params: dict[str, Any],
    name: str | None,
    source: Instance | None,
) -> Instance:
    for key in ("arrivals", "source", "source_digest"):
        if key not in params:
            raise InputError("missing for family 'resample'", field=f"params.{key}")
    if source is None:
        from lsched.traces import read_trace  # the reader is only needed here

        source, _report = read_trace(params["source"])
    if lengths_digest(source) != params["source_digest"]:
        raise InputError(
            f"the source's (prompt, output) digest is {lengths_digest(source)}; "
            f"expected {params['source_digest']} (not the recorded source)",
            field="params.source_digest",
        )
    return resample(
        source,
        n,
        seed=seed,
        arrivals=params["arrivals"],
        source_label=params["source"],
        name=name,
    )
