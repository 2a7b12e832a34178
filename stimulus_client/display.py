"""The PsychoPy side: one window, frame-counted presentations, flip-locked markers, timing bookkeeping.

Only this module imports PsychoPy (and only when a :class:`Display` is made), so the scheduling logic
and the protocol stay testable without a screen. Times: ``win.flip()`` returns the flip time on
PsychoPy's clock; ``win.callOnFlip`` runs the marker/TTL push right after that flip, where the LSL
timestamp is taken.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from stimulus_client.markers import TTL, MarkerOutlet, marker_text
from stimulus_client.schedule import QueuedBatch, Schedule, presentation_frames, timing_qc, ttl_word
from wire.messages import Presentation

log = logging.getLogger("snslab.display")

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclass
class DisplayOptions:
    fullscreen: bool = False
    screen: int = 0
    size: tuple[int, int] = (800, 600)
    background: float = 0.0  # PsychoPy rgb, -1 (black) .. 1 (white); 0 = mid grey
    refresh_hz: float | None = None  # None: measure
    frames_on: int | None = None  # operator override of every presentation
    frames_off: int | None = None
    image_size: int | None = None  # width in pixels (aspect kept); None: native
    fixation: bool = False
    fixation_size: int = 8
    photodiode: str | None = None  # a corner, or None
    photodiode_size: int = 40
    pace: str = "auto"  # auto: software frame clock when flips do not wait for vsync; on; off


class FrameClock:
    """Software frame pacing for displays without vsync (Xvfb, VMs): each flip waits for the next tick of a
    clock at the declared rate, so frame counts mean durations and late frames count as dropped.

    Ticks are ``t0 + k / rate``; a flip more than one frame behind re-starts the clock (that interval is
    then recorded as a dropped frame by PsychoPy, as a missed retrace would be)."""

    def __init__(self, rate_hz: float, clock=time.perf_counter, sleep=time.sleep):
        self.period = 1.0 / float(rate_hz)
        self.clock, self.sleep = clock, sleep
        self.next: float | None = None

    def wait(self) -> None:
        now = self.clock()
        if self.next is None or now > self.next + self.period:
            self.next = now
        elif now < self.next:
            self.sleep(self.next - now)
        self.next += self.period


def quiet_psychopy() -> None:
    """Before importing PsychoPy: no user site-packages on sys.path, no update checks or usage stats, and
    only errors on the console (dropped frames are counted and reported, not printed)."""
    os.environ.setdefault("PSYCHOPYNOPACKAGES", "1")
    from psychopy import logging as plog
    from psychopy import prefs

    prefs.connections["allowUsageStats"] = False
    prefs.connections["checkForUpdates"] = False
    prefs.connections["autoProxy"] = False
    plog.console.setLevel(plog.ERROR)


def corner_pos(corner: str, win_size: tuple[int, int], patch: int) -> tuple[float, float]:
    """Centre of a square patch of side ``patch`` px flush with a window corner (pix units, origin centre)."""
    if corner not in CORNERS:
        raise ValueError(f"photodiode corner: {corner!r} (allowed: {', '.join(CORNERS)})")
    w, h = win_size
    x = (w - patch) / 2 * (1 if corner.endswith("right") else -1)
    y = (h - patch) / 2 * (1 if corner.startswith("top") else -1)
    return x, y


class Display:
    """Opens the window, measures the refresh rate and presents batches."""

    def __init__(self, opts: DisplayOptions, *, outlet: MarkerOutlet | None = None, ttl: TTL | None = None):
        quiet_psychopy()
        from psychopy import core, event, visual

        self.opts = opts
        self.outlet = outlet
        self.ttl = ttl
        self._visual, self._event, self._core = visual, event, core
        self.win = visual.Window(
            size=list(opts.size), fullscr=opts.fullscreen, screen=opts.screen, units="pix",
            color=[opts.background] * 3, colorSpace="rgb", allowGUI=not opts.fullscreen, winType="pyglet",
            checkTiming=False, waitBlanking=True,
        )  # fmt: skip
        self.win.mouseVisible = not opts.fullscreen
        self.frame_clock: FrameClock | None = None
        self.refresh_hz, self.refresh_measured = self._refresh_rate(opts.refresh_hz)
        self.win.refreshThreshold = 1.5 / self.refresh_hz  # an interval over 1.5 frames = a dropped frame
        self.win.recordFrameIntervals = False
        self.fixation = None
        if opts.fixation:
            self.fixation = visual.Circle(
                self.win, radius=opts.fixation_size / 2, fillColor="red", lineColor=None, units="pix"
            )
        self.patch = None
        if opts.photodiode:
            pos = corner_pos(opts.photodiode, tuple(self.win.size), opts.photodiode_size)
            self.patch = visual.Rect(
                self.win, width=opts.photodiode_size, height=opts.photodiode_size, pos=pos,
                fillColor="black", lineColor=None, units="pix",
            )  # fmt: skip
        self.last_flip: float | None = None

    def _refresh_rate(self, fixed: float | None) -> tuple[float, bool]:
        """The rate durations are counted in. With ``pace="auto"`` the rate is measured: when it is
        implausible (flips do not wait for a retrace: no vsync) the display says so loudly and paces its
        flips on a software frame clock at ``fixed`` (or 60 Hz); a display with vsync is unchanged."""
        pace = self.opts.pace
        if pace == "on":
            self.frame_clock = FrameClock(fixed or 60.0)
            log.warning("software frame clock at %.2f Hz (--pace on): flips do not wait for the screen",
                        fixed or 60.0)
            return float(fixed or 60.0), False
        if fixed and pace == "off":
            return float(fixed), False
        rate = self.win.getActualFrameRate(nIdentical=10, nMaxFrames=120, nWarmUpFrames=10, threshold=1)
        plausible = rate is not None and 20 <= rate <= 300 and (not fixed or abs(rate - fixed) <= 0.2 * fixed)
        if plausible:
            log.info("measured refresh rate %.2f Hz", rate)
            return (float(fixed), False) if fixed else (float(rate), True)
        declared = float(fixed or 60.0)
        if pace == "off":
            log.warning("could not measure a stable refresh rate (%s); assuming 60 Hz (set --refresh-hz)", rate)
            return declared, False
        for line in (
            f"THE MEASURED REFRESH RATE ({'none' if rate is None else f'{rate:.0f} Hz'}) IS NOT A REAL SCREEN'S: "
            "flips do not wait for vsync (Xvfb, a VM, a laptop without blanking)",
            f"pacing flips on a software frame clock at {declared:g} Hz"
            + ("" if fixed else " (assumed: pass --refresh-hz)")
            + "; onsets are only as good as this machine's sleep, use a photodiode for timing",
        ):
            log.warning(line)
        self.frame_clock = FrameClock(declared)
        return declared, False

    # ---- frames
    def _draw_overlay(self, on: bool) -> None:
        if self.fixation is not None:
            self.fixation.draw()
        if self.patch is not None:
            self.patch.fillColor = "white" if on else "black"
            self.patch.draw()

    def flip(self) -> float:
        if self.frame_clock is not None:
            self.frame_clock.wait()
        self.last_flip = self.win.flip()
        return self.last_flip

    def idle(self) -> None:
        """One background frame (keeps the window responsive while waiting for a batch)."""
        self._draw_overlay(False)
        self.flip()

    def escape_pressed(self) -> bool:
        return bool(self._event.getKeys(keyList=["escape"]))

    # ---- batches
    def preload(self, qb: QueuedBatch) -> list:
        """Textures for every image of the batch, made before its first flip."""
        from PIL import Image

        stims = []
        for img in qb.images:
            h, w = img.shape[:2]
            size = None
            if self.opts.image_size:
                size = (self.opts.image_size, self.opts.image_size * h / w)
            pil = Image.fromarray(np.ascontiguousarray(img))  # PIL keeps the top row on top
            stims.append(self._visual.ImageStim(self.win, image=pil, size=size, units="pix"))
        return stims

    def run_batch(
        self, qb: QueuedBatch, schedule: Schedule, report: Callable[[QueuedBatch, dict], None]
    ) -> int:
        """Show a batch in order, reporting each presentation right after its offset flip. Stops early on
        stop/clear. Returns how many were shown."""
        stims = self.preload(qb)
        self.win.frameIntervals = []
        self.win.recordFrameIntervals = True
        self.idle()  # sync to the retrace before the first onset
        shown = 0
        try:
            for p in qb.presentations:
                if schedule.paused:
                    self.win.recordFrameIntervals = False
                    while schedule.paused and schedule.still_wanted(qb):
                        self.idle()
                        schedule.wait(0.05)
                    self.win.recordFrameIntervals = True
                    self.idle()  # back on the retrace, so the next onset is not flagged late
                if not schedule.still_wanted(qb):
                    break
                if self.escape_pressed():
                    schedule.control("stop")
                    break
                word = ttl_word(schedule.presented) if self.ttl is not None else None

                def after_offset(fields: dict, pid: str = p.presentation_id) -> None:
                    schedule.mark_shown(pid)
                    report(qb, fields)

                self.present(p, stims[p.image], word, after_offset)
                shown += 1
        finally:
            self.win.recordFrameIntervals = False
        return shown

    def present(self, p: Presentation, stim, word: int | None, after_offset: Callable[[dict], None]) -> dict:
        """Frames on, then frames off. ``after_offset(fields)`` runs right after the offset flip (the report
        goes out during the blank period); returns the report fields (all but the batch context)."""
        n_on, n_off = presentation_frames(p, self.refresh_hz, self.opts.frames_on, self.opts.frames_off)
        marks: dict = {"marker_sent": False}

        def onset() -> None:
            if self.outlet is not None:
                t = self.outlet.clock()
                marks["onset_lsl"] = t
                marks["marker_sent"] = self.outlet.push(marker_text(p.presentation_id), t)
            if self.ttl is not None:
                self.ttl.set(word)

        def offset() -> None:
            if self.outlet is not None:
                marks["offset_lsl"] = self.outlet.clock()
            if self.ttl is not None:
                self.ttl.set(0)

        prev = self.last_flip
        dropped0 = self.win.nDroppedFrames
        onset_t = offset_t = None
        for f in range(n_on):
            stim.draw()
            self._draw_overlay(True)
            if f == 0:
                self.win.callOnFlip(onset)
            t = self.flip()
            if f == 0:
                onset_t = t
        self._draw_overlay(False)
        self.win.callOnFlip(offset)
        offset_t = self.flip()
        dropped = self.win.nDroppedFrames - dropped0
        fields = dict(
            presentation_id=p.presentation_id, stimulus_id=p.stimulus_id, order=p.order, attempt=p.attempt,
            flip_time=onset_t, flip_time_lsl=marks.get("onset_lsl"), offset_time=offset_t,
            offset_time_lsl=marks.get("offset_lsl"), frames_on=n_on, frames_off=n_off, refresh_hz=self.refresh_hz,
            on_duration_s=max(0.0, offset_t - onset_t), dropped_frames=dropped, marker_sent=marks["marker_sent"],
            ttl_word=word, photodiode_patch=self.patch is not None,
            qc=timing_qc(refresh_hz=self.refresh_hz, frames_on=n_on, prev_flip=prev, onset=onset_t,
                         offset=offset_t, dropped=dropped),
        )  # fmt: skip
        after_offset(fields)
        for _ in range(n_off - 1):
            self._draw_overlay(False)
            self.flip()
        return fields

    def close(self) -> None:
        try:
            self.win.close()
        except Exception:  # closing a dead GL context must not hide the real exit reason
            log.debug("window close failed", exc_info=True)
