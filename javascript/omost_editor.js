// Omost region editor: select, drag, resize (snapping to Omost's 729 boxes), reorder, recolour, add, duplicate,
// delete, undo/redo, all by mouse or keyboard, on the canvas the Python side sends.
//
// The Python side is the source of truth. It writes the canvas as JSON into a hidden "editor state" textbox
// ({ack, live, width, height, canvas, error}); this file draws it, and every edit writes the whole edited canvas
// ({seq, canvas}) into a hidden "editor edit" textbox, from which Python validates it and rewrites the Canvas
// code, whose change comes back as a new state. The geometry below mirrors lib_omost/layout.py (same vocabulary
// order, same arithmetic) so the snapped phrase can follow the mouse; tests/test_ui_browser.py checks they agree.
// Plain JS, no build step; works with gradio 3.41 (A1111) and 4.40 (Forge).
(function () {
    if (window.omostEditor) return;

    var GRID = 90;
    var LOCATIONS = [['in the center', 45, 45], ['on the left', 15, 45], ['on the right', 75, 45],
        ['on the top', 45, 15], ['on the bottom', 45, 75], ['on the top-left', 15, 15], ['on the top-right', 75, 15],
        ['on the bottom-left', 15, 75], ['on the bottom-right', 75, 75]];
    var OFFSETS = [['no offset', 0, 0], ['slightly to the left', -10, 0], ['slightly to the right', 10, 0],
        ['slightly to the upper', 0, -10], ['slightly to the lower', 0, 10], ['slightly to the upper-left', -10, -10],
        ['slightly to the upper-right', 10, -10], ['slightly to the lower-left', -10, 10],
        ['slightly to the lower-right', 10, 10]];
    var AREAS = [['a small square area', 50, 50], ['a small vertical area', 40, 60], ['a small horizontal area', 60, 40],
        ['a medium-sized square area', 60, 60], ['a medium-sized vertical area', 50, 80],
        ['a medium-sized horizontal area', 80, 50], ['a large square area', 70, 70], ['a large vertical area', 60, 90],
        ['a large horizontal area', 90, 60]];
    var COLORS = {
        aliceblue: [240, 248, 255], antiquewhite: [250, 235, 215], aqua: [0, 255, 255], aquamarine: [127, 255, 212],
        azure: [240, 255, 255], beige: [245, 245, 220], bisque: [255, 228, 196], black: [0, 0, 0],
        blanchedalmond: [255, 235, 205], blue: [0, 0, 255], blueviolet: [138, 43, 226], brown: [165, 42, 42],
        burlywood: [222, 184, 135], cadetblue: [95, 158, 160], chartreuse: [127, 255, 0], chocolate: [210, 105, 30],
        coral: [255, 127, 80], cornflowerblue: [100, 149, 237], cornsilk: [255, 248, 220], crimson: [220, 20, 60],
        cyan: [0, 255, 255], darkblue: [0, 0, 139], darkcyan: [0, 139, 139], darkgoldenrod: [184, 134, 11],
        darkgray: [169, 169, 169], darkgrey: [169, 169, 169], darkgreen: [0, 100, 0], darkkhaki: [189, 183, 107],
        darkmagenta: [139, 0, 139], darkolivegreen: [85, 107, 47], darkorange: [255, 140, 0],
        darkorchid: [153, 50, 204], darkred: [139, 0, 0], darksalmon: [233, 150, 122], darkseagreen: [143, 188, 143],
        darkslateblue: [72, 61, 139], darkslategray: [47, 79, 79], darkslategrey: [47, 79, 79],
        darkturquoise: [0, 206, 209], darkviolet: [148, 0, 211], deeppink: [255, 20, 147], deepskyblue: [0, 191, 255],
        dimgray: [105, 105, 105], dimgrey: [105, 105, 105], dodgerblue: [30, 144, 255], firebrick: [178, 34, 34],
        floralwhite: [255, 250, 240], forestgreen: [34, 139, 34], fuchsia: [255, 0, 255], gainsboro: [220, 220, 220],
        ghostwhite: [248, 248, 255], gold: [255, 215, 0], goldenrod: [218, 165, 32], gray: [128, 128, 128],
        grey: [128, 128, 128], green: [0, 128, 0], greenyellow: [173, 255, 47], honeydew: [240, 255, 240],
        hotpink: [255, 105, 180], indianred: [205, 92, 92], indigo: [75, 0, 130], ivory: [255, 255, 240],
        khaki: [240, 230, 140], lavender: [230, 230, 250], lavenderblush: [255, 240, 245], lawngreen: [124, 252, 0],
        lemonchiffon: [255, 250, 205], lightblue: [173, 216, 230], lightcoral: [240, 128, 128],
        lightcyan: [224, 255, 255], lightgoldenrodyellow: [250, 250, 210], lightgray: [211, 211, 211],
        lightgrey: [211, 211, 211], lightgreen: [144, 238, 144], lightpink: [255, 182, 193],
        lightsalmon: [255, 160, 122], lightseagreen: [32, 178, 170], lightskyblue: [135, 206, 250],
        lightslategray: [119, 136, 153], lightslategrey: [119, 136, 153], lightsteelblue: [176, 196, 222],
        lightyellow: [255, 255, 224], lime: [0, 255, 0], limegreen: [50, 205, 50], linen: [250, 240, 230],
        magenta: [255, 0, 255], maroon: [128, 0, 0], mediumaquamarine: [102, 205, 170], mediumblue: [0, 0, 205],
        mediumorchid: [186, 85, 211], mediumpurple: [147, 112, 219], mediumseagreen: [60, 179, 113],
        mediumslateblue: [123, 104, 238], mediumspringgreen: [0, 250, 154], mediumturquoise: [72, 209, 204],
        mediumvioletred: [199, 21, 133], midnightblue: [25, 25, 112], mintcream: [245, 255, 250],
        mistyrose: [255, 228, 225], moccasin: [255, 228, 181], navajowhite: [255, 222, 173], navy: [0, 0, 128],
        navyblue: [0, 0, 128], oldlace: [253, 245, 230], olive: [128, 128, 0], olivedrab: [107, 142, 35],
        orange: [255, 165, 0], orangered: [255, 69, 0], orchid: [218, 112, 214], palegoldenrod: [238, 232, 170],
        palegreen: [152, 251, 152], paleturquoise: [175, 238, 238], palevioletred: [219, 112, 147],
        papayawhip: [255, 239, 213], peachpuff: [255, 218, 185], peru: [205, 133, 63], pink: [255, 192, 203],
        plum: [221, 160, 221], powderblue: [176, 224, 230], purple: [128, 0, 128], rebeccapurple: [102, 51, 153],
        red: [255, 0, 0], rosybrown: [188, 143, 143], royalblue: [65, 105, 225], saddlebrown: [139, 69, 19],
        salmon: [250, 128, 114], sandybrown: [244, 164, 96], seagreen: [46, 139, 87], seashell: [255, 245, 238],
        sienna: [160, 82, 45], silver: [192, 192, 192], skyblue: [135, 206, 235], slateblue: [106, 90, 205],
        slategray: [112, 128, 144], slategrey: [112, 128, 144], snow: [255, 250, 250], springgreen: [0, 255, 127],
        steelblue: [70, 130, 180], tan: [210, 180, 140], teal: [0, 128, 128], thistle: [216, 191, 216],
        tomato: [255, 99, 71], turquoise: [64, 224, 208], violet: [238, 130, 238], wheat: [245, 222, 179],
        white: [255, 255, 255], whitesmoke: [245, 245, 245], yellow: [255, 255, 0], yellowgreen: [154, 205, 50]
    };
    var LOCAL_FIELDS = ['location', 'offset', 'area', 'distance_to_viewer', 'description', 'detailed_descriptions',
        'tags', 'atmosphere', 'style', 'quality_meta', 'HTML_web_color_name'];
    var GLOBAL_FIELDS = ['description', 'detailed_descriptions', 'tags', 'HTML_web_color_name'];

    function find(table, name) {
        for (var i = 0; i < table.length; i++) if (table[i][0] === name) return table[i];
        return null;
    }

    // ---- geometry (mirror of lib_omost/layout.py) -------------------------------------------------------------

    function clip(v) { return Math.max(0, Math.min(GRID, v)); }

    function boxRect(location, offset, area) {  // lib_omost.canvas.omost_rect: (top, bottom, left, right)
        var l = find(LOCATIONS, location), o = find(OFFSETS, offset), a = find(AREAS, area);
        var cx = l[1] + o[1], cy = l[2] + o[2], hw = Math.floor(a[1] / 2), hh = Math.floor(a[2] / 2);
        return [clip(cy - hh), clip(cy + hh), clip(cx - hw), clip(cx + hw)];
    }

    var BOXES = [];
    LOCATIONS.forEach(function (l) {
        OFFSETS.forEach(function (o) {
            AREAS.forEach(function (a) { BOXES.push([l[0], o[0], a[0], boxRect(l[0], o[0], a[0])]); });
        });
    });

    function centre(location, offset) {
        var l = find(LOCATIONS, location), o = find(OFFSETS, offset);
        return [l[1] + o[1], l[2] + o[2]];
    }

    function centreIndex(c) { return Math.max(0, Math.min(8, Math.floor((c - 5) / 10 + 0.5))); }

    function fromCentreIndex(ix, iy) {
        var bases = [15, 45, 75], shifts = [-10, 0, 10], loc = null, off = null;
        var bx = bases[Math.floor(ix / 3)], by = bases[Math.floor(iy / 3)], dx = shifts[ix % 3], dy = shifts[iy % 3];
        LOCATIONS.forEach(function (l) { if (l[1] === bx && l[2] === by) loc = l[0]; });
        OFFSETS.forEach(function (o) { if (o[1] === dx && o[2] === dy) off = o[0]; });
        return [loc, off];
    }

    function snapMove(cx, cy) { return fromCentreIndex(centreIndex(cx), centreIndex(cy)); }

    function nudge(location, offset, dx, dy) {
        var c = centre(location, offset);
        return fromCentreIndex(Math.max(0, Math.min(8, centreIndex(c[0]) + dx)),
            Math.max(0, Math.min(8, centreIndex(c[1]) + dy)));
    }

    function snapResize(rect, width, height) {
        var sx = width / GRID, sy = height / GRID, best = null, bestCost = null;
        for (var i = 0; i < BOXES.length; i++) {
            var r = BOXES[i][3];
            var d1 = (rect[0] - r[0]) * sy, d2 = (rect[1] - r[1]) * sy, d3 = (rect[2] - r[2]) * sx,
                d4 = (rect[3] - r[3]) * sx;
            var cost = d1 * d1 + d2 * d2 + d3 * d3 + d4 * d4;
            if (bestCost === null || cost < bestCost) { best = BOXES[i]; bestCost = cost; }
        }
        return [best[0], best[1], best[2]];
    }

    function phrase(location, offset, area) {
        return [location].concat(offset === 'no offset' ? [] : [offset]).concat([area]).join(', ');
    }

    // ---- the canvas model ---------------------------------------------------------------------------------

    function pick(obj, fields) {
        var out = {};
        fields.forEach(function (f) {
            var v = obj[f];
            if (f === 'detailed_descriptions') v = (v || []).slice();
            else if (f === 'distance_to_viewer') v = Number(v);
            else if (v === undefined || v === null) v = '';
            out[f] = v;
        });
        return out;
    }

    function modelFrom(canvasJson) {  // null when the canvas has no editable form (ComfyUI rect-only JSON)
        if (!canvasJson || !canvasJson.global || !('description' in canvasJson.global)) return null;
        var regions = canvasJson.regions || [];
        for (var i = 0; i < regions.length; i++) if (!('location' in regions[i])) return null;
        return {global: pick(canvasJson.global, GLOBAL_FIELDS), regions: regions.map(function (r) {
            return pick(r, LOCAL_FIELDS);
        })};
    }

    function canon(model) { return model ? JSON.stringify(model) : ''; }
    function copy(model) { return JSON.parse(JSON.stringify(model)); }

    function sortFarToNear(regions) {  // stable, like Python's sorted(..., reverse=True) on distance
        return regions.map(function (r, i) { return [r, i]; }).sort(function (a, b) {
            return (b[0].distance_to_viewer - a[0].distance_to_viewer) || (a[1] - b[1]);
        }).map(function (p) { return p[0]; });
    }

    function label(text, words) {
        var w = String(text || '').replace(/\.+\s*$/, '').split(/\s+/).filter(Boolean);
        return w.slice(0, words).join(' ') + (w.length > words ? '...' : '');
    }

    function rgb(name) {
        var c = COLORS[name] || [128, 128, 128];
        return 'rgb(' + c[0] + ',' + c[1] + ',' + c[2] + ')';
    }

    function contrast(name) {
        var c = COLORS[name] || [128, 128, 128];
        return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] > 140 ? '#000' : '#fff';
    }

    // ---- DOM helpers ------------------------------------------------------------------------------------

    function root() {
        var app = document.querySelector('gradio-app');
        return (app && app.shadowRoot) || document;
    }

    function el(tag, cls, text) {
        var e = document.createElement(tag);
        if (cls) e.className = cls;
        if (text !== undefined) e.textContent = text;
        return e;
    }

    function button(text, title, onClick) {
        var b = el('button', 'omost-ed-button', text);
        b.type = 'button';
        b.title = title;
        b.setAttribute('aria-label', title);
        b.addEventListener('click', onClick);
        return b;
    }

    function setTextbox(textarea, value) {
        textarea.value = value;
        textarea.dispatchEvent(new Event('input', {bubbles: true}));
    }

    // ---- one editor instance (txt2img, img2img) -------------------------------------------------------------

    function Editor(mount, prefix) {
        this.mount = mount;
        this.prefix = prefix;
        this.model = null;       // {global, regions (far to near)}
        this.width = 1024;
        this.height = 1024;
        this.live = false;
        this.selected = -1;      // index in model.regions; -1 = the background (global)
        this.undo = [];
        this.redo = [];
        this.seq = 0;            // the last edit sent
        this.ack = 0;            // the last edit Python applied
        this.stateText = null;
        this.drag = null;
        this.build();
    }

    Editor.prototype.textarea = function (name) {
        return root().querySelector('#' + this.prefix + name + ' textarea, #' + this.prefix + name + ' input');
    };

    Editor.prototype.build = function () {
        var self = this;
        var box = el('div', 'omost-ed');
        var bar = el('div', 'omost-ed-toolbar');
        bar.setAttribute('role', 'toolbar');
        bar.setAttribute('aria-label', 'Region editor');
        this.buttons = {
            add: button('+ Add', 'Add a region (Insert)', function () { self.add(); }),
            duplicate: button('Duplicate', 'Duplicate the selected region (Ctrl+D)', function () { self.duplicate(); }),
            remove: button('Delete', 'Delete the selected region (Delete)', function () { self.remove(); }),
            forward: button('Forward', 'Bring forward: nearer to the viewer (Page Up)', function () { self.reorder(1); }),
            back: button('Back', 'Send back: farther from the viewer (Page Down)', function () { self.reorder(-1); }),
            undo: button('Undo', 'Undo (Ctrl+Z)', function () { self.stepHistory(self.undo, self.redo); }),
            redo: button('Redo', 'Redo (Ctrl+Y)', function () { self.stepHistory(self.redo, self.undo); })
        };
        Object.keys(this.buttons).forEach(function (k) {
            self.buttons[k].classList.add('omost-ed-' + k);
            bar.appendChild(self.buttons[k]);
        });
        box.appendChild(bar);

        this.stage = el('div', 'omost-ed-stage');
        this.stage.tabIndex = 0;
        this.stage.setAttribute('role', 'application');
        this.stage.setAttribute('aria-label', 'Regions. Arrow keys move the selected region, Shift+arrows resize it, ' +
            'Tab and Shift+Tab select the next or previous region.');
        this.sketch = el('canvas', 'omost-ed-sketch');
        this.sketch.width = GRID;
        this.sketch.height = GRID;
        this.stage.appendChild(this.sketch);
        this.layer = el('div', 'omost-ed-layer');
        this.stage.appendChild(this.layer);
        this.ghost = el('div', 'omost-ed-ghost');
        this.stage.appendChild(this.ghost);
        this.empty = el('div', 'omost-ed-empty', 'No canvas yet: chat with the LLM, paste Canvas code, or press + Add.');
        this.stage.appendChild(this.empty);
        box.appendChild(this.stage);

        this.phraseLine = el('div', 'omost-ed-phrase');
        this.phraseLine.setAttribute('aria-live', 'polite');
        box.appendChild(this.phraseLine);
        this.list = el('div', 'omost-ed-list');
        this.list.setAttribute('role', 'listbox');
        this.list.setAttribute('aria-label', 'Regions, far to near');
        box.appendChild(this.list);
        this.form = el('div', 'omost-ed-form');
        box.appendChild(this.form);
        this.mount.appendChild(box);

        if (window.ResizeObserver) new ResizeObserver(function () { if (!self.drag) self.render(false); }).observe(box);
        this.stage.addEventListener('pointerdown', function (e) { self.pointerDown(e); });
        this.stage.addEventListener('pointermove', function (e) { self.pointerMove(e); });
        this.stage.addEventListener('pointerup', function (e) { self.pointerUp(e); });
        this.stage.addEventListener('pointercancel', function () { self.cancelDrag(); });
        box.addEventListener('keydown', function (e) { self.keyDown(e); });
        this.render(true);
    };

    // -- state from Python

    Editor.prototype.poll = function () {
        var ta = this.textarea('editor_state');
        if (!ta || ta.value === this.stateText) return;
        this.stateText = ta.value;
        var state;
        try { state = JSON.parse(ta.value || '{}'); } catch (err) { return; }
        this.receive(state);
    };

    Editor.prototype.receive = function (state) {
        this.ack = Math.max(this.ack, state.ack || 0);
        var sizeChanged = (state.width && state.width !== this.width) || (state.height && state.height !== this.height);
        if (state.width) this.width = state.width;
        if (state.height) this.height = state.height;
        if (this.ack < this.seq) {  // an edit of ours is still on its way: this state is older than what we show
            if (sizeChanged) this.render(false);
            return;
        }
        // Code that does not parse: keep showing the last good canvas, but do not edit it (an edit would
        // overwrite what the user is typing in the code box).
        this.blocked = !state.canvas && state.error ? state.error : null;
        if (this.blocked) {
            this.wasBlocked = true;
            this.render(true);
            return;
        }
        var incoming = state.canvas ? modelFrom(state.canvas) : null;
        var readOnly = state.canvas && !incoming ? state.canvas : null;  // ComfyUI rect-only JSON: shown, not edited
        if (!readOnly && !this.readOnly && canon(incoming) === canon(this.model)) {
            this.live = !!state.live;
            this.render(sizeChanged || this.wasBlocked);
            this.wasBlocked = false;
            return;
        }
        if (this.model && !this.live) this.undo.push(canon(this.model));  // a chat reply or code edit is undoable
        this.readOnly = readOnly;
        this.model = incoming;
        this.live = !!state.live;
        this.redo = [];
        if (!this.model || this.selected >= this.model.regions.length) this.selected = -1;
        this.render(true);
    };

    // -- edits

    Editor.prototype.send = function () {
        var ta = this.textarea('editor_edit');
        if (!ta || !this.model) return;
        this.seq += 1;
        setTextbox(ta, JSON.stringify({seq: this.seq, canvas: {format: 'omost-canvas', version: 1,
            global: this.model.global, regions: this.model.regions}}));
    };

    Editor.prototype.stepHistory = function (from, to) {
        if (!from.length || this.drag || this.blocked) return;
        if (this.model) to.push(canon(this.model));
        this.model = JSON.parse(from.pop());
        this.readOnly = null;
        this.selected = Math.min(this.selected, this.model.regions.length - 1);
        this.live = false;
        this.send();
        this.render(true);
    };

    Editor.prototype.editable = function () {
        return !!this.model && !this.readOnly && !this.blocked;
    };

    Editor.prototype.current = function () {
        return this.editable() && this.selected >= 0 ? this.model.regions[this.selected] : null;
    };

    // One undoable edit: fn(a copy of the model, the selected region in it) changes the copy and returns false
    // (nothing to do), nothing (keep the selection) or the index in model.regions to select (-1: background).
    Editor.prototype.change = function (fn, keepForm) {
        if (!this.editable()) return;
        var model = copy(this.model);
        var region = this.selected >= 0 ? model.regions[this.selected] : null;
        var result = fn(model, region);
        if (result === false) {
            this.render(!keepForm);
            return;
        }
        var chosen = typeof result === 'number' ? (result >= 0 ? model.regions[result] : null) : region;
        this.undo.push(canon(this.model));
        this.redo = [];
        model.regions = sortFarToNear(model.regions);
        this.selected = chosen ? model.regions.indexOf(chosen) : -1;
        this.model = model;
        this.live = false;
        this.send();
        this.render(!keepForm);
    };

    Editor.prototype.add = function () {
        if (this.readOnly || this.blocked) return;
        if (!this.model) {
            this.model = {global: {description: 'An image.', detailed_descriptions: [], tags: '',
                HTML_web_color_name: 'gray'}, regions: []};
        }
        this.change(function (model) {
            var d = model.regions.map(function (r) { return r.distance_to_viewer; });
            var near = d.length ? Math.min.apply(null, d) : 2;
            var region = {location: 'in the center', offset: 'no offset', area: 'a small square area',
                distance_to_viewer: near > 1 ? near - 1 : near / 2, description: 'A new region.',
                detailed_descriptions: [], tags: '', atmosphere: '', style: '', quality_meta: '',
                HTML_web_color_name: 'gold'};
            model.regions.push(region);
            return model.regions.length - 1;
        });
    };

    Editor.prototype.duplicate = function () {
        this.change(function (model, region) {
            if (!region) return false;
            var twin = JSON.parse(JSON.stringify(region));
            var moved = nudge(twin.location, twin.offset, 1, 1);
            twin.location = moved[0];
            twin.offset = moved[1];
            model.regions.splice(model.regions.indexOf(region) + 1, 0, twin);  // same distance: drawn just after
            return model.regions.indexOf(twin);
        });
    };

    Editor.prototype.remove = function () {
        this.change(function (model, region) {
            if (!region) return false;
            model.regions.splice(model.regions.indexOf(region), 1);
            return -1;
        });
    };

    Editor.prototype.reorder = function (step) {  // +1: one place nearer (forward), -1: one place farther (back)
        this.change(function (model, region) {
            if (!region) return false;
            var i = model.regions.indexOf(region), j = i + step;
            if (j < 0 || j >= model.regions.length) return false;
            var other = model.regions[j], d = region.distance_to_viewer;
            region.distance_to_viewer = other.distance_to_viewer;  // swap places and distances: the order holds
            other.distance_to_viewer = d;                          // even for equal distances (stable sort)
            model.regions[i] = other;
            model.regions[j] = region;
            return j;
        });
    };

    Editor.prototype.place = function (location, offset, area) {
        this.change(function (model, region) {
            if (!region || (region.location === location && region.offset === offset && region.area === area)) {
                return false;  // the same box: nothing to rewrite (the change() re-render resets a dragged box)
            }
            region.location = location;
            region.offset = offset;
            region.area = area;
        });
    };

    Editor.prototype.setField = function (field, value) {
        var self = this;
        this.change(function (model, region) {
            var target = region || model.global;
            if (field === 'distance_to_viewer') {
                value = Number(value);
                if (!(value > 0) || !isFinite(value)) { self.render(true); return false; }
            }
            if (JSON.stringify(target[field]) === JSON.stringify(value)) return false;
            target[field] = value;
        }, field !== 'distance_to_viewer');
    };

    // -- pointer

    Editor.prototype.gridPoint = function (e) {
        var r = this.stage.getBoundingClientRect();
        return [(e.clientX - r.left) / r.width * GRID, (e.clientY - r.top) / r.height * GRID];
    };

    Editor.prototype.pointerDown = function (e) {
        if (e.button !== 0 || !this.model) return;
        var target = e.target, handle = target.getAttribute && target.getAttribute('data-handle');
        var boxEl = target.closest ? target.closest('.omost-ed-box') : null;
        this.stage.focus();
        if (!boxEl && !handle) {
            this.select(-1);
            return;
        }
        var i = handle ? this.selected : Number(boxEl.getAttribute('data-index'));  // handles: the selected box's
        if (i !== this.selected) this.select(i);
        if (!this.editable()) return;
        var region = this.model.regions[i];
        this.drag = {index: i, handle: handle, start: this.gridPoint(e), moved: false,
            rect: boxRect(region.location, region.offset, region.area),
            centre: centre(region.location, region.offset), area: find(AREAS, region.area), snapped: null};
        try { this.stage.setPointerCapture(e.pointerId); } catch (err) { /* synthetic events */ }
        e.preventDefault();
    };

    Editor.prototype.pointerMove = function (e) {
        var d = this.drag;
        if (!d) return;
        var p = this.gridPoint(e), dx = p[0] - d.start[0], dy = p[1] - d.start[1];
        if (!d.moved && Math.abs(dx) + Math.abs(dy) < 1) return;
        d.moved = true;
        var region = this.model.regions[d.index], raw, snapped;
        if (!d.handle) {  // move: the area stays, the centre snaps to the 9 x 9 grid of centres
            var cx = d.centre[0] + dx, cy = d.centre[1] + dy, hw = d.area[1] / 2, hh = d.area[2] / 2;
            raw = [clip(cy - hh), clip(cy + hh), clip(cx - hw), clip(cx + hw)];
            var lo = snapMove(cx, cy);
            snapped = [lo[0], lo[1], region.area];
        } else {  // resize: the dragged edges follow the pointer, the box snaps to the nearest of all 729
            raw = d.rect.slice();
            if (d.handle.indexOf('n') >= 0) raw[0] = Math.min(clip(d.rect[0] + dy), raw[1] - 1);
            if (d.handle.indexOf('s') >= 0) raw[1] = Math.max(clip(d.rect[1] + dy), raw[0] + 1);
            if (d.handle.indexOf('w') >= 0) raw[2] = Math.min(clip(d.rect[2] + dx), raw[3] - 1);
            if (d.handle.indexOf('e') >= 0) raw[3] = Math.max(clip(d.rect[3] + dx), raw[2] + 1);
            snapped = snapResize(raw, this.width, this.height);
        }
        d.snapped = snapped;
        var boxEl = this.layer.querySelector('.omost-ed-box[data-index="' + d.index + '"]');
        if (boxEl) position(boxEl, raw);
        position(this.handles, raw);
        position(this.ghost, boxRect(snapped[0], snapped[1], snapped[2]));
        this.ghost.style.display = 'block';
        this.phraseLine.textContent = 'Snaps to: ' + phrase(snapped[0], snapped[1], snapped[2]);
    };

    Editor.prototype.pointerUp = function () {
        var d = this.drag;
        if (!d) return;
        this.drag = null;
        this.ghost.style.display = 'none';
        if (d.moved && d.snapped) this.place(d.snapped[0], d.snapped[1], d.snapped[2]);
        else this.render(false);
    };

    Editor.prototype.cancelDrag = function () {
        this.drag = null;
        this.ghost.style.display = 'none';
        this.render(false);
    };

    // -- keyboard

    Editor.prototype.keyDown = function (e) {
        var tag = (e.target.tagName || '').toLowerCase();
        var inField = tag === 'input' || tag === 'textarea' || tag === 'select';
        var key = e.key, ctrl = e.ctrlKey || e.metaKey;
        if (ctrl && !inField && (key === 'z' || key === 'Z') && !e.shiftKey) {
            this.stepHistory(this.undo, this.redo);
        } else if (ctrl && !inField && (key === 'y' || key === 'Y' || ((key === 'z' || key === 'Z') && e.shiftKey))) {
            this.stepHistory(this.redo, this.undo);
        } else if (e.target !== this.stage) {
            return;
        } else if (key.indexOf('Arrow') === 0) {
            var r = this.current();
            if (!r) return;
            var dx = key === 'ArrowLeft' ? -1 : key === 'ArrowRight' ? 1 : 0;
            var dy = key === 'ArrowUp' ? -1 : key === 'ArrowDown' ? 1 : 0;
            if (e.shiftKey) {  // resize: move the right/bottom edge by one step (10 grid units), then snap
                var rect = boxRect(r.location, r.offset, r.area);
                rect[3] = Math.max(rect[2] + 1, clip(rect[3] + 10 * dx));
                rect[1] = Math.max(rect[0] + 1, clip(rect[1] + 10 * dy));
                var s = snapResize(rect, this.width, this.height);
                this.place(s[0], s[1], s[2]);
            } else {
                var lo = nudge(r.location, r.offset, dx, dy);
                this.place(lo[0], lo[1], r.area);
            }
        } else if (key === 'Tab' && this.model && this.model.regions.length) {
            var n = this.model.regions.length, next = this.selected + (e.shiftKey ? -1 : 1);
            if (next < -1 || next >= n) return;  // leave the stage the normal way at either end
            this.select(next);
        } else if (ctrl && (key === 'd' || key === 'D')) {
            this.duplicate();
        } else if (key === 'Delete' || key === 'Backspace') {
            this.remove();
        } else if (key === 'Insert') {
            this.add();
        } else if (key === 'PageUp') {
            this.reorder(1);
        } else if (key === 'PageDown') {
            this.reorder(-1);
        } else if (key === 'Escape') {
            this.select(-1);
        } else {
            return;
        }
        e.preventDefault();
        e.stopPropagation();
    };

    Editor.prototype.select = function (i) {
        this.selected = i;
        this.render(true);
    };

    // -- drawing

    function position(node, rect) {
        node.style.top = (rect[0] / GRID * 100) + '%';
        node.style.height = ((rect[1] - rect[0]) / GRID * 100) + '%';
        node.style.left = (rect[2] / GRID * 100) + '%';
        node.style.width = ((rect[3] - rect[2]) / GRID * 100) + '%';
    }

    function labelRow(shown, i) {  // how many farther boxes have their label near this one's
        var row = 0, r = shown[i].rect;
        for (var j = 0; j < i; j++) {
            var q = shown[j].rect;
            if (Math.abs(q[0] - r[0]) < 4 && Math.abs(q[2] - r[2]) < 25) row++;
        }
        return row;
    }

    Editor.prototype.drawSketch = function (regions, g) {  // Omost's sketch on the 90 grid; g: background rgb
        var ctx = this.sketch.getContext('2d'), img = ctx.createImageData(GRID, GRID);
        var px = new Float32Array(GRID * GRID * 3), i, x, y;
        for (i = 0; i < GRID * GRID; i++) { px[3 * i] = g[0]; px[3 * i + 1] = g[1]; px[3 * i + 2] = g[2]; }
        regions.forEach(function (r) {
            var c = r.color;
            for (y = r.rect[0]; y < r.rect[1]; y++) {
                for (x = r.rect[2]; x < r.rect[3]; x++) {
                    var k = 3 * (y * GRID + x);
                    px[k] = 0.7 * c[0] + 0.3 * px[k];
                    px[k + 1] = 0.7 * c[1] + 0.3 * px[k + 1];
                    px[k + 2] = 0.7 * c[2] + 0.3 * px[k + 2];
                }
            }
        });
        for (i = 0; i < GRID * GRID; i++) {
            img.data[4 * i] = px[3 * i];
            img.data[4 * i + 1] = px[3 * i + 1];
            img.data[4 * i + 2] = px[3 * i + 2];
            img.data[4 * i + 3] = 255;
        }
        ctx.putImageData(img, 0, 0);
    };

    Editor.prototype.shownRegions = function () {  // [{description, color, colorName, rect, region}]
        if (this.readOnly) {
            return (this.readOnly.regions || []).map(function (r) {
                return {description: (r.prefixes || []).slice(-1)[0] || '', color: r.color || [0, 0, 0],
                    colorName: '', rect: r.rect};
            });
        }
        return this.model.regions.map(function (r) {
            return {description: r.description, color: COLORS[r.HTML_web_color_name] || [128, 128, 128],
                colorName: r.HTML_web_color_name, rect: boxRect(r.location, r.offset, r.area), region: r};
        });
    };

    Editor.prototype.render = function (withForm) {
        var self = this, has = !!(this.model || this.readOnly);
        this.mount.classList.toggle('omost-ed-has-canvas', has);
        var maxH = 480, w = this.stage.parentNode.clientWidth || 480;
        var width = Math.min(w, maxH * this.width / this.height);
        this.stage.style.width = (has ? width : w) + 'px';
        this.stage.style.height = (has ? width * this.height / this.width : 64) + 'px';  // no canvas: one line
        this.empty.style.display = has ? 'none' : 'flex';
        this.layer.textContent = '';
        Object.keys(this.buttons).forEach(function (k) {
            var b = self.buttons[k], r = self.current();
            b.disabled = k === 'undo' ? !self.undo.length : k === 'redo' ? !self.redo.length :
                k === 'add' ? !!self.readOnly : !r || (k === 'forward' && self.selected === self.model.regions.length - 1)
                    || (k === 'back' && self.selected === 0);
        });
        if (!has) {
            this.sketch.getContext('2d').clearRect(0, 0, GRID, GRID);
            this.list.textContent = '';
            this.form.textContent = '';
            this.phraseLine.textContent = '';
            return;
        }
        var shown = this.shownRegions();
        var labels = [];
        this.drawSketch(shown, this.readOnly ? this.readOnly.global.color || [0, 0, 0] :
            COLORS[this.model.global.HTML_web_color_name] || [0, 0, 0]);
        shown.forEach(function (s, i) {
            var b = el('div', 'omost-ed-box' + (i === self.selected ? ' omost-ed-selected' : ''));
            b.setAttribute('data-index', String(i));
            b.style.zIndex = String(10 + i);
            b.style.borderColor = 'rgb(' + s.color.join(',') + ')';
            position(b, s.rect);
            // Labels sit above every box (a nearer box never hides a farther one's label); boxes that share a
            // corner get their labels stacked.
            var tag = el('span', 'omost-ed-label', (i + 1) + ' ' + label(s.description, 4));
            tag.style.background = 'rgba(' + s.color.join(',') + ',0.85)';
            tag.style.color = s.colorName ? contrast(s.colorName) : '#fff';
            tag.style.top = 'calc(' + (s.rect[0] / GRID * 100) + '% + ' + (2 + labelRow(shown, i) * 17) + 'px)';
            tag.style.left = 'calc(' + (s.rect[2] / GRID * 100) + '% + 3px)';
            tag.style.maxWidth = 'calc(' + ((s.rect[3] - s.rect[2]) / GRID * 100) + '% - 6px)';
            labels.push(tag);
            self.layer.appendChild(b);
        });
        labels.forEach(function (tag) { self.layer.appendChild(tag); });
        // The selected box's resize handles sit above every box and label, so a nearer box never hides them.
        this.handles = el('div', 'omost-ed-handles');
        if (this.current()) {
            position(this.handles, shown[this.selected].rect);
            ['n', 's', 'e', 'w', 'ne', 'nw', 'se', 'sw'].forEach(function (h) {
                var handle = el('span', 'omost-ed-handle omost-ed-handle-' + h);
                handle.setAttribute('data-handle', h);
                self.handles.appendChild(handle);
            });
            this.layer.appendChild(this.handles);
        }
        var r = this.current();
        this.phraseLine.textContent = this.blocked ? 'The Canvas code has an error (see below); fix it to edit ' +
            'here again.' : r ? (this.selected + 1) + ': ' + phrase(r.location, r.offset, r.area) + ', distance ' +
            r.distance_to_viewer : this.readOnly ? 'This canvas (ComfyUI JSON) has only rects: it cannot be ' +
            'edited here.' : 'Background selected. Click a region, or Tab to it.';
        this.renderList(shown);
        if (withForm) this.renderForm();
    };

    Editor.prototype.renderList = function (shown) {
        var self = this;
        this.list.textContent = '';
        var items = [{i: -1, text: '0 background', color: this.readOnly ? null : this.model.global.HTML_web_color_name}]
            .concat(shown.map(function (s, i) { return {i: i, text: (i + 1) + ' ' + label(s.description, 6),
                color: s.colorName}; }));
        items.forEach(function (it) {
            var b = el('button', 'omost-ed-item' + (it.i === self.selected ? ' omost-ed-item-selected' : ''));
            b.type = 'button';
            b.setAttribute('role', 'option');
            b.setAttribute('aria-selected', it.i === self.selected ? 'true' : 'false');
            b.setAttribute('data-index', String(it.i));
            var sw = el('span', 'omost-ed-swatch');
            if (it.color) sw.style.background = rgb(it.color);
            b.appendChild(sw);
            b.appendChild(document.createTextNode(it.text));
            b.addEventListener('click', function () { self.select(it.i); });
            self.list.appendChild(b);
        });
    };

    Editor.prototype.renderForm = function () {
        var self = this;
        this.form.textContent = '';
        if (!this.editable()) return;
        var r = this.current(), target = r || this.model.global;
        var title = el('div', 'omost-ed-form-title', r ? 'Region ' + (this.selected + 1) : 'Background (global description)');
        this.form.appendChild(title);

        function field(name, text, input) {
            var row = el('label', 'omost-ed-field omost-ed-field-' + name);
            row.appendChild(el('span', 'omost-ed-field-name', text));
            row.appendChild(input);
            self.form.appendChild(row);
            return input;
        }

        function textInput(name, text) {
            var input = el('input');
            input.type = 'text';
            input.value = target[name];
            input.setAttribute('data-field', name);
            input.addEventListener('change', function () { self.setField(name, input.value); });
            return field(name, text, input);
        }

        function select(name, text, options, value) {
            var s = el('select');
            s.setAttribute('data-field', name);
            options.forEach(function (o) {
                var opt = el('option', '', o);
                opt.value = o;
                if (o === value) opt.selected = true;
                s.appendChild(opt);
            });
            return field(name, text, s);
        }

        textInput('description', 'Description');
        var details = el('textarea');
        details.rows = 3;
        details.value = target.detailed_descriptions.join('\n');
        details.setAttribute('data-field', 'detailed_descriptions');
        details.addEventListener('change', function () {
            self.setField('detailed_descriptions', details.value.split('\n').map(function (s) { return s.trim(); })
                .filter(Boolean));
        });
        field('detailed_descriptions', 'Detailed descriptions (one per line)', details);
        textInput('tags', 'Tags');
        if (r) {
            textInput('atmosphere', 'Atmosphere');
            textInput('style', 'Style');
            textInput('quality_meta', 'Quality meta');
            var dist = el('input');
            dist.type = 'number';
            dist.min = '0';
            dist.step = '0.1';
            dist.value = String(r.distance_to_viewer);
            dist.setAttribute('data-field', 'distance_to_viewer');
            dist.addEventListener('change', function () { self.setField('distance_to_viewer', dist.value); });
            field('distance_to_viewer', 'Distance to viewer (far = big)', dist);
            var where = {};
            [['location', LOCATIONS], ['offset', OFFSETS], ['area', AREAS]].forEach(function (p) {
                where[p[0]] = select(p[0], p[0][0].toUpperCase() + p[0].slice(1), p[1].map(function (x) { return x[0]; }),
                    r[p[0]]);
                where[p[0]].addEventListener('change', function () {
                    self.place(where.location.value, where.offset.value, where.area.value);
                });
            });
        }
        var colour = select('HTML_web_color_name', 'Colour', Object.keys(COLORS), target.HTML_web_color_name);
        Array.prototype.forEach.call(colour.options, function (o) {
            o.style.background = rgb(o.value);
            o.style.color = contrast(o.value);
        });
        var swatch = el('span', 'omost-ed-swatch omost-ed-colour-swatch');
        swatch.style.background = rgb(target.HTML_web_color_name);
        colour.parentNode.appendChild(swatch);
        colour.addEventListener('change', function () {
            swatch.style.background = rgb(colour.value);  // the form is kept while the code is rewritten
            self.setField('HTML_web_color_name', colour.value);
        });
    };

    // ---- instances --------------------------------------------------------------------------------------

    var editors = {};

    function scan() {
        var mounts = root().querySelectorAll('[id$="_omost_editor"]');
        Array.prototype.forEach.call(mounts, function (m) {
            var prefix = m.id.slice(0, -'editor'.length);
            var ed = editors[m.id];
            if (!ed || !ed.mount.isConnected || !m.contains(ed.mount.firstChild)) {
                var target = m.querySelector('.omost-editor-mount') || m;
                if (target.querySelector('.omost-ed')) return;
                ed = editors[m.id] = new Editor(target, prefix);
            }
            ed.poll();
        });
    }

    setInterval(scan, 150);
    window.addEventListener('resize', function () {
        Object.keys(editors).forEach(function (k) { editors[k].render(false); });
    });

    window.omostEditor = {
        editors: editors, boxRect: boxRect, snapMove: snapMove, snapResize: snapResize, nudge: nudge, phrase: phrase,
        boxes: BOXES, colors: COLORS, locations: LOCATIONS, offsets: OFFSETS, areas: AREAS
    };
})();
