"""Generated burst timings, and a replay of them through a window policy.

The generator draws contacts who write the way WhatsApp users do: each has a typing pace of their
own (a median pause between messages and a typing speed), bursts of one to ten messages, long
messages that take a while to type, voice notes whose recording time is part of the gap before
them, pictures, and now and then a distraction that stops them mid-burst. The parameters are
stated in :class:`Population` and in docs/smart-windows.md; they are assumptions, not data.

:func:`replay` runs every contact's bursts, in order, through :func:`quiet_ms` with one policy,
learning each contact's rhythm as it goes, exactly as the intake would: after each message the
buffer closes once the wait passes with nothing new. It counts how long contacts waited after
their last message, and how many bursts were cut into two replies because a message came after
the buffer had closed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from chatbuffer.domain.smart_window import MessageShape, Rhythm, WindowPolicy, quiet_ms

#: The age cap: a burst is answered at the latest this long after its first message.
MAX_AGE_MS = 300_000


@dataclass(frozen=True, slots=True)
class Message:
    #: Milliseconds since the burst's first message.
    at_ms: float
    shape: MessageShape


@dataclass(frozen=True, slots=True)
class Burst:
    messages: tuple[Message, ...]
    urgency: int


@dataclass(frozen=True, slots=True)
class Contact:
    bursts: tuple[Burst, ...]


@dataclass(frozen=True, slots=True)
class Population:
    """The generator's assumptions."""

    contacts: int = 2_000
    bursts_per_contact: tuple[int, int] = (3, 12)
    #: Median pause before a message, across contacts (log-normal, ms), and its spread.
    pause_median_ms: float = 4_000
    pause_spread: float = 0.6
    #: Typing speed, characters per second, uniform across contacts.
    chars_per_s: tuple[float, float] = (2.5, 6.0)
    #: After the first, each message continues the burst with this probability.
    continue_p: float = 0.55
    max_messages: int = 10
    voice_share: float = 0.12
    image_share: float = 0.06
    #: Recording time of a voice note, uniform (s).
    voice_s: tuple[float, float] = (3.0, 40.0)
    #: Text length: log-normal median and spread (characters).
    text_median_chars: float = 35
    text_spread: float = 0.9
    #: Share of pauses that are a distraction, and their median length (ms).
    distraction_share: float = 0.04
    distraction_median_ms: float = 25_000
    #: Probability that a burst's last text is a question, and that an earlier one is.
    last_question_p: float = 0.55
    other_question_p: float = 0.12
    #: Share of bursts with an urgency of 8 or more.
    urgent_share: float = 0.1


def generate(population: Population, seed: int) -> list[Contact]:
    """The contacts and their bursts, the same for the same seed."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible simulation, not a secret
    contacts = []
    for _ in range(population.contacts):
        pause_ms = rng.lognormvariate(math.log(population.pause_median_ms), population.pause_spread)
        pace = _Pace(
            pause_ms=min(max(pause_ms, 800.0), 20_000.0),
            jitter=rng.uniform(0.3, 0.8),
            chars_per_s=rng.uniform(*population.chars_per_s),
        )
        count = rng.randint(*population.bursts_per_contact)
        contacts.append(Contact(tuple(_burst(rng, population, pace) for _ in range(count))))
    return contacts


@dataclass(frozen=True, slots=True)
class _Pace:
    pause_ms: float
    jitter: float
    chars_per_s: float


def _burst(rng: random.Random, population: Population, pace: _Pace) -> Burst:
    size = 1
    while size < population.max_messages and rng.random() < population.continue_p:
        size += 1
    messages: list[Message] = []
    at = 0.0
    for index in range(size):
        kind = rng.random()
        last = index == size - 1
        if kind < population.voice_share:
            compose_ms = rng.uniform(*population.voice_s) * 1000
            shape = MessageShape(0, question=False, voice_pending=True)
        elif kind < population.voice_share + population.image_share:
            compose_ms = rng.uniform(2_000, 8_000)
            shape = MessageShape(0)
        else:
            chars = int(
                min(
                    600,
                    max(
                        1,
                        rng.lognormvariate(
                            math.log(population.text_median_chars), population.text_spread
                        ),
                    ),
                )
            )
            compose_ms = chars / pace.chars_per_s * 1000
            question_p = population.last_question_p if last else population.other_question_p
            shape = MessageShape(chars, question=rng.random() < question_p)
        if index > 0:
            pause = rng.lognormvariate(math.log(pace.pause_ms), pace.jitter)
            if rng.random() < population.distraction_share:
                pause += rng.lognormvariate(math.log(population.distraction_median_ms), 0.5)
            at += pause + compose_ms
        messages.append(Message(at, shape))
    urgency = rng.randint(8, 10) if rng.random() < population.urgent_share else rng.randint(1, 7)
    return Burst(tuple(messages), urgency)


@dataclass
class Outcome:
    """What one policy did with the whole population."""

    bursts: int = 0
    #: Buffers closed (a burst cut once makes two).
    buffers: int = 0
    #: Bursts answered in more than one reply: a message came after its buffer closed.
    cut: int = 0
    #: Per buffer: from its last message to its close (ms).
    waits_ms: list[float] = field(default_factory=list)
    #: Which bursts (by their order in the replay) were cut.
    cut_bursts: set[int] = field(default_factory=set)

    def cut_early_against(self, baseline: Outcome) -> int:
        """Bursts this policy cut that ``baseline`` (the fixed window) kept whole."""
        return len(self.cut_bursts - baseline.cut_bursts)

    @property
    def cut_share(self) -> float:
        return self.cut / self.bursts if self.bursts else 0.0

    @property
    def mean_wait_ms(self) -> float:
        return sum(self.waits_ms) / len(self.waits_ms) if self.waits_ms else 0.0

    def percentile_wait_ms(self, q: float) -> float:
        if not self.waits_ms:
            return 0.0
        ordered = sorted(self.waits_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def replay(contacts: Sequence[Contact], policy: WindowPolicy) -> Outcome:
    """Every contact's bursts through ``policy``, each contact's rhythm learned as it goes."""
    outcome = Outcome()
    for contact in contacts:
        rhythm = Rhythm()
        for burst in contact.bursts:
            outcome.bursts += 1
            buffers = _replay_burst(burst, policy, rhythm)
            rhythm = buffers.rhythm
            outcome.buffers += len(buffers.waits_ms)
            outcome.waits_ms.extend(buffers.waits_ms)
            if len(buffers.waits_ms) > 1:
                outcome.cut += 1
                outcome.cut_bursts.add(outcome.bursts)
    return outcome


@dataclass
class _BurstReplay:
    rhythm: Rhythm
    waits_ms: list[float]


def _replay_burst(burst: Burst, policy: WindowPolicy, rhythm: Rhythm) -> _BurstReplay:
    waits: list[float] = []
    open_shapes: list[MessageShape] = []
    opened_at = 0.0
    messages = burst.messages
    for index, message in enumerate(messages):
        if not open_shapes:
            opened_at = message.at_ms
        open_shapes.append(message.shape)
        close_at = min(
            message.at_ms + quiet_ms(policy, rhythm, open_shapes, burst.urgency),
            opened_at + MAX_AGE_MS,
        )
        following = messages[index + 1].at_ms if index + 1 < len(messages) else math.inf
        if following < close_at:
            rhythm = rhythm.observe(following - message.at_ms, policy.base_ms)
            continue
        waits.append(max(0.0, close_at - message.at_ms))
        open_shapes = []
        if following != math.inf:
            rhythm = rhythm.observe(following - message.at_ms, policy.base_ms)
    return _BurstReplay(rhythm, waits)
