// The display window (grey levels) of the shown image; it never changes what the model sees.

// CT presets in HU, the same as the app's `window` request field offers
export const CT_WINDOWS = {
  soft_tissue: [-160, 240], liver: [-45, 105], lung: [-1350, 150], bone: [-450, 1050], brain: [0, 80],
};

export class DisplayWindow {
  // modelWindow() returns the {low, high} the app used for its last result, if any
  constructor(view, select, modelWindow) {
    this.view = view;
    this.select = select;
    this.modelWindow = modelWindow;
    select.addEventListener('change', () => this.apply());
  }

  // "as the model sees it": the app's window once a result says it; before that the
  // soft-tissue preset for CT and a robust range (1st-99th percentile) for anything else
  apply() {
    const choice = this.select.value;
    if (!this.view.image) return;
    if (choice === 'full') this.view.setWindow(this.view.valueRange());
    else if (CT_WINDOWS[choice]) this.view.setWindow(CT_WINDOWS[choice]);
    else {
      const used = this.modelWindow();
      if (used) this.view.setWindow([used.low, used.high]);
      else this.view.setWindow(this.view.looksLikeCT() ? CT_WINDOWS.soft_tissue : null);
    }
  }

  followModel() {
    if (this.select.value === 'model') this.apply();
  }
}
