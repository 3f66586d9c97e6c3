"""What a Messages API call costs, from a per-model price table.

Prices are USD per million tokens (platform.claude.com/docs/en/about-claude/pricing,
checked 2026-10). A 5-minute cache write costs 1.25x the input price; a cache read
0.1x (a few newer models read cache cheaper: ``cache_read_x``). Some models charge
more for every token of a request whose prompt (input + cache reads + cache writes)
is over a threshold (``long_prompt``).

A model that is not in the table is priced at the most expensive known price, with a
warning (once per model): over-estimating keeps the budgets safe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import structlog

log = structlog.get_logger("agent.pricing")

MILLION = 1_000_000
CACHE_WRITE_X = 1.25  # 5-minute TTL (the only one the agents use)
CACHE_READ_X = 0.1


@dataclass(frozen=True, slots=True)
class LongPrompt:
    """Over ``threshold_tokens`` of prompt, input-side prices x ``input_x`` and output x ``output_x``."""

    threshold_tokens: int
    input_x: float
    output_x: float


@dataclass(frozen=True, slots=True)
class Price:
    input: float  # USD per million input tokens
    output: float  # USD per million output tokens
    cache_read_x: float = CACHE_READ_X
    long_prompt: LongPrompt | None = None

    @property
    def cache_write(self) -> float:
        return self.input * CACHE_WRITE_X

    @property
    def cache_read(self) -> float:
        return self.input * self.cache_read_x

    def cost(self, input_tokens: int, output_tokens: int, cache_read_tokens: int = 0, cache_write_tokens: int = 0) -> float:
        """USD for one call. ``input_tokens`` are the uncached ones (the API reports the three apart)."""
        in_x = out_x = 1.0
        prompt = input_tokens + cache_read_tokens + cache_write_tokens
        if self.long_prompt is not None and prompt > self.long_prompt.threshold_tokens:
            in_x, out_x = self.long_prompt.input_x, self.long_prompt.output_x
        return (
            input_tokens * self.input * in_x
            + cache_write_tokens * self.cache_write * in_x
            + cache_read_tokens * self.cache_read * in_x
            + output_tokens * self.output * out_x
        ) / MILLION


_SONNET_1M = LongPrompt(200_000, 2.0, 1.5)  # Sonnet 4 / 4.5 with the 1M-token context window

# Keys are model ids without a date suffix (see ``normalize``).
PRICES: dict[str, Price] = {
    "claude-fable-5-1": Price(10.0, 50.0, cache_read_x=0.025),
    "claude-mythos-5-1": Price(10.0, 50.0, cache_read_x=0.025),
    "claude-fable-5": Price(10.0, 50.0),
    "claude-mythos-5": Price(10.0, 50.0),
    "claude-opus-5-5": Price(4.0, 20.0, cache_read_x=0.05),
    "claude-opus-5": Price(5.0, 25.0),
    "claude-opus-4-8": Price(5.0, 25.0),
    "claude-opus-4-7": Price(5.0, 25.0),
    "claude-opus-4-6": Price(5.0, 25.0),
    "claude-opus-4-5": Price(5.0, 25.0),
    "claude-opus-4-1": Price(15.0, 75.0),
    "claude-opus-4": Price(15.0, 75.0),
    "claude-3-opus": Price(15.0, 75.0),
    "claude-sonnet-5-5": Price(2.0, 10.0, cache_read_x=0.05),
    "claude-sonnet-5": Price(2.0, 10.0),
    "claude-sonnet-4-6": Price(3.0, 15.0),
    "claude-sonnet-4-5": Price(3.0, 15.0, long_prompt=_SONNET_1M),
    "claude-sonnet-4": Price(3.0, 15.0, long_prompt=_SONNET_1M),
    "claude-3-7-sonnet": Price(3.0, 15.0),
    "claude-3-5-sonnet": Price(3.0, 15.0),
    "claude-haiku-5-5": Price(0.10, 0.50, long_prompt=LongPrompt(100_000, 5.0, 5.0)),
    "claude-haiku-4-5": Price(1.0, 5.0),
    "claude-3-5-haiku": Price(0.80, 4.0),
    "claude-3-haiku": Price(0.25, 1.25),
}
ALIASES = {"claude-opus-4-0": "claude-opus-4", "claude-sonnet-4-0": "claude-sonnet-4"}

# For a model we do not know: the dearest input and output prices in the table.
FALLBACK = Price(max(p.input for p in PRICES.values()), max(p.output for p in PRICES.values()))

_PROVIDER_PREFIX = re.compile(r"^(?:[a-z]{2,4}\.)?anthropic[./]")  # Bedrock "us.anthropic.", "anthropic/"
_SUFFIXES = (
    re.compile(r"\[1m\]$"),  # 1M-context variant name
    re.compile(r"-v\d+(?::\d+)?$"),  # Bedrock "-v1:0"
    re.compile(r"@\d{8}$"),  # Vertex "@20250929"
    re.compile(r"-\d{8}$"),  # API snapshot "-20250929"
    re.compile(r"-latest$"),
)
_warned: set[str] = set()


def normalize(model: str) -> str:
    """``claude-sonnet-4-5-20250929``, ``us.anthropic.claude-sonnet-4-5-20250929-v1:0`` -> ``claude-sonnet-4-5``."""
    name = _PROVIDER_PREFIX.sub("", model.strip().lower())
    for suffix in _SUFFIXES:
        name = suffix.sub("", name)
    return ALIASES.get(name, name)


def set_price(model: str, input_per_mtok: float, output_per_mtok: float) -> None:
    """The session's own entry (``aar up --llm-price``): a self-hosted model's price, 0 for free."""
    PRICES[normalize(model)] = Price(float(input_per_mtok), float(output_per_mtok))


def price_for(model: str) -> Price:
    """The price of ``model``; an unknown model gets :data:`FALLBACK` and a warning (once)."""
    price = PRICES.get(normalize(model))
    if price is not None:
        return price
    if model not in _warned:
        _warned.add(model)
        log.warning("unknown_model_price", model=model, fallback_input=FALLBACK.input, fallback_output=FALLBACK.output,
                    hint="add it to services/agents/pricing.py PRICES")
    return FALLBACK


def is_known(model: str) -> bool:
    return normalize(model) in PRICES


def cost_usd(model: str, input_tokens: int, output_tokens: int, cache_read_tokens: int = 0,
             cache_write_tokens: int = 0) -> float:
    return price_for(model).cost(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens)


def charged_usd(model: str, claimed: float, input_tokens: int, output_tokens: int, cache_read_tokens: int = 0,
                cache_write_tokens: int = 0) -> float:
    """What a call counts against the budgets: what the price table says of its tokens,
    never more than the agent claims (an agent cannot inflate a session's spend and end it)."""
    return min(claimed, cost_usd(model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens))
