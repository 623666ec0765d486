// A study whose third axis is time (a video or cine loop: api.js fetchVolume's video, frameTimeMs):
// the slider is the frame, Play steps through the frames at the video's own rate and loops, as an
// echo machine shows a loop; a prompt is drawn on the frame shown, so drawing pauses it.

export class Cine {
  // button: Play/Pause; step(): show the next frame
  constructor(button, step) {
    Object.assign(this, { button, step, frameTimeMs: null, video: false, timer: null });
    button.addEventListener('click', () => (this.timer ? this.pause() : this.play()));
  }

  get on() {
    return this.video;
  }

  get playing() {
    return this.timer !== null;
  }

  // the study opened: a video (its frame time, null when its files do not say) or not
  open(frameTimeMs, video = Boolean(frameTimeMs)) {
    this.pause();
    this.video = Boolean(video);
    this.frameTimeMs = (video && frameTimeMs) || null;
    this.button.hidden = !this.on;
    this.button.disabled = !this.frameTimeMs;
    this.button.title = this.frameTimeMs ? 'Play the loop at its own frame rate'
      : 'The frame time of this loop is not known (a folder of frames without frames.json): step with the slider';
  }

  play() {
    if (!this.frameTimeMs || this.timer) return;
    this.button.textContent = 'Pause';
    this.timer = setInterval(() => this.step(), Math.max(16, this.frameTimeMs));
  }

  pause() {
    clearInterval(this.timer);
    this.timer = null;
    this.button.textContent = 'Play';
  }

  // where frame k is in the loop, in a clinician's words
  at(k) {
    if (!this.on) return '';
    return this.frameTimeMs ? ` (${((k * this.frameTimeMs) / 1000).toFixed(2)} s)` : ' (frame time not known)';
  }
}
