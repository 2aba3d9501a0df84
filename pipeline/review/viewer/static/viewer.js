/* micromet viewer: OpenSeadragon deep zoom of one slide, with the heatmap as a second image,
   deposit outlines as an SVG layer (candidates for review dashed, in their own group), deposit
   and candidate tables that zoom to one, and a scale bar in mm. Coordinates: the API gives level-0 px; OpenSeadragon's viewport has the slide's
   width as 1, so viewport = level-0 px / slide width.
   State for tests and debugging is exposed on window.micromet. */
(function () {
  'use strict';

  var SVG_NS = 'http://www.w3.org/2000/svg';
  var NICE_MM = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50];
  var SCALEBAR_MAX_PX = 160;
  var MIN_FOCUS_FIELD_MM = 0.3;  // zooming to a tiny deposit still shows its surroundings
  var FOCUS_MARGIN = 1.4;        // field = deposit extent around its centroid x this
  var UNKNOWN_COLOR = '#777777';

  var state = {
    ready: false,            // slide open, heatmap and outlines set up
    tilesLoaded: false,      // every tile needed for the current view of the slide drawn
    heatmapItem: null,
    viewer: null,
    info: null,
    widthPx: null,
    focusTarget: null,       // viewport point of the deposit last zoomed to
    scalebar: null
  };
  window.micromet = state;

  var root = document.getElementById('viewer-root');

  function showMessage(text) {
    var element = document.getElementById('viewer-message');
    if (element) {
      element.textContent = text;
      element.hidden = false;
    }
  }

  function point(x, y) {
    return new OpenSeadragon.Point(x, y);
  }

  function pixelsPerLevel0Px(viewer) {
    var perViewportUnit = viewer.viewport.deltaPixelsFromPointsNoRotate(point(1, 0), true).x;
    return perViewportUnit / state.widthPx;
  }

  function addHeatmap(viewer, info) {
    var toggle = document.getElementById('heatmap-toggle');
    var slider = document.getElementById('heatmap-opacity');
    var heatmap = info.heatmap;
    if (!heatmap) {
      toggle.disabled = true;
      slider.disabled = true;
      return Promise.resolve();
    }
    function opacity() {
      return toggle.checked ? parseFloat(slider.value) : 0;
    }
    function update() {
      if (state.heatmapItem) {
        state.heatmapItem.setOpacity(opacity());
      }
    }
    toggle.addEventListener('change', update);
    slider.addEventListener('input', update);
    return new Promise(function (resolve) {
      viewer.addTiledImage({
        tileSource: {type: 'image', url: heatmap.url, buildPyramid: false},
        x: heatmap.x_px / state.widthPx,
        y: heatmap.y_px / state.widthPx,
        width: heatmap.width_px / state.widthPx,
        opacity: opacity(),
        success: function (event) {
          state.heatmapItem = event.item;
          resolve();
        },
        error: function (event) {
          showMessage('The heatmap cannot be shown: ' + (event.message || 'load failed'));
          resolve();
        }
      });
    });
  }

  function svgElement(name, attributes) {
    var element = document.createElementNS(SVG_NS, name);
    Object.keys(attributes).forEach(function (key) {
      element.setAttribute(key, attributes[key]);
    });
    return element;
  }

  function outlineShape(deposit, className) {
    var outline = deposit.outline_xy || [];
    if (outline.length >= 3) {
      var points = outline.map(function (xy) { return xy[0] + ',' + xy[1]; }).join(' ');
      return svgElement('polygon', {points: points, 'class': className});
    }
    var radius = Math.max(deposit.bbox_width_px || 0, deposit.bbox_height_px || 0) / 2 || 10;
    return svgElement('circle', {
      cx: deposit.centroid_x_px, cy: deposit.centroid_y_px, r: radius, 'class': className
    });
  }

  function addOutlines(viewer, info) {
    var deposits = (info.report && info.report.deposits) || [];
    var svg = svgElement('svg', {'class': 'outline-layer'});
    var layer = svgElement('g', {});
    svg.appendChild(layer);
    viewer.canvas.appendChild(svg);
    // Candidates first, so deposits are drawn over them; their stroke comes from the CSS.
    var candidateLayer = svgElement('g', {'class': 'candidate-layer'});
    layer.appendChild(candidateLayer);
    state.candidateOutlines = (info.candidates || []).map(function (candidate) {
      var group = svgElement('g', {'class': 'candidate'});
      group.appendChild(outlineShape(candidate, 'outline-halo'));
      group.appendChild(outlineShape(candidate, 'outline'));
      candidateLayer.appendChild(group);
      return group;
    });
    state.outlines = deposits.map(function (deposit) {
      var group = svgElement('g', {'class': 'deposit'});
      var line = outlineShape(deposit, 'outline');
      line.setAttribute('stroke', info.category_colors[deposit.category] || UNKNOWN_COLOR);
      group.appendChild(outlineShape(deposit, 'outline-halo'));
      group.appendChild(line);
      layer.appendChild(group);
      return group;
    });
    function place() {
      var origin = viewer.viewport.pixelFromPoint(point(0, 0), true);
      var scale = pixelsPerLevel0Px(viewer);
      layer.setAttribute('transform',
        'translate(' + origin.x + ' ' + origin.y + ') scale(' + scale + ')');
    }
    ['animation', 'resize', 'update-viewport'].forEach(function (name) {
      viewer.addHandler(name, place);
    });
    place();
    var toggle = document.getElementById('outline-toggle');
    toggle.addEventListener('change', function () {
      svg.setAttribute('visibility', toggle.checked ? 'visible' : 'hidden');
    });
    var candidateToggle = document.getElementById('candidate-toggle');
    if (candidateToggle) {
      candidateToggle.addEventListener('change', function () {
        candidateLayer.setAttribute('visibility', candidateToggle.checked ? 'inherit' : 'hidden');
      });
    }
  }

  function depositBox(deposit) {
    // [x0, y0, x1, y1] in level-0 px: the report's bbox, else the outline's extent.
    var x0 = deposit.bbox_x_px, y0 = deposit.bbox_y_px;
    if (typeof x0 === 'number' && typeof y0 === 'number') {
      return [x0, y0, x0 + deposit.bbox_width_px, y0 + deposit.bbox_height_px];
    }
    var outline = deposit.outline_xy || [];
    if (!outline.length) {
      return null;
    }
    var xs = outline.map(function (xy) { return xy[0]; });
    var ys = outline.map(function (xy) { return xy[1]; });
    return [Math.min.apply(null, xs), Math.min.apply(null, ys),
            Math.max.apply(null, xs), Math.max.apply(null, ys)];
  }

  function focusDeposit(viewer, deposit, mpp) {
    var box = depositBox(deposit);
    if (!box || !box.every(isFinite)) {
      showMessage('Deposit ' + deposit.id + ' has no position in report.json.');
      return;
    }
    var cx = deposit.centroid_x_px, cy = deposit.centroid_y_px;
    if (typeof cx !== 'number' || typeof cy !== 'number') {
      cx = (box[0] + box[2]) / 2;
      cy = (box[1] + box[3]) / 2;
    }
    var minHalf = mpp ? MIN_FOCUS_FIELD_MM * 1000 / mpp / 2 : 0;
    var halfWidth = Math.max(Math.max(cx - box[0], box[2] - cx) * FOCUS_MARGIN, minHalf, 1);
    var halfHeight = Math.max(Math.max(cy - box[1], box[3] - cy) * FOCUS_MARGIN, minHalf, 1);
    var width = state.widthPx;
    state.focusTarget = {x: cx / width, y: cy / width};
    viewer.viewport.fitBounds(new OpenSeadragon.Rect(
      (cx - halfWidth) / width, (cy - halfHeight) / width,
      2 * halfWidth / width, 2 * halfHeight / width));
  }

  // rowSelector: the table's rows; indexAttribute: the row's index into items; outlines():
  // the SVG groups of items, in the same order. Selecting a row selects one outline of all.
  function setupZoomTable(viewer, info, rowSelector, indexAttribute, items, outlines) {
    var rows = document.querySelectorAll(rowSelector);
    Array.prototype.forEach.call(rows, function (row) {
      var index = Number(row.getAttribute(indexAttribute));
      var deposit = items[index];
      if (!deposit) {
        return;
      }
      function select() {
        Array.prototype.forEach.call(document.querySelectorAll('#deposit-table tr.selected, ' +
          '#candidate-table tr.selected'), function (other) { other.classList.remove('selected'); });
        (state.outlines || []).concat(state.candidateOutlines || []).forEach(function (group) {
          group.classList.remove('selected');
        });
        var group = outlines()[index];
        if (group) {
          group.classList.add('selected');
        }
        row.classList.add('selected');
        focusDeposit(viewer, deposit, info.mpp);
      }
      row.addEventListener('click', select);
      row.addEventListener('keydown', function (event) {
        if (event.key === 'Enter' || event.key === ' ') {
          event.preventDefault();
          select();
        }
      });
    });
  }

  function formatMm(mm) {
    return (mm >= 1 ? String(mm) : mm.toPrecision(1)) + ' mm';
  }

  function setupScaleBar(viewer, info) {
    var element = document.getElementById('scalebar');
    if (!info.mpp) {
      return;
    }
    var bar = element.querySelector('.scalebar-bar');
    var label = element.querySelector('.scalebar-label');
    element.hidden = false;
    function update() {
      var pxPerMm = pixelsPerLevel0Px(viewer) * 1000 / info.mpp;
      var mm = NICE_MM[0];
      NICE_MM.forEach(function (candidate) {
        if (candidate * pxPerMm <= SCALEBAR_MAX_PX) {
          mm = candidate;
        }
      });
      bar.style.width = (mm * pxPerMm).toFixed(1) + 'px';
      label.textContent = formatMm(mm);
      state.scalebar = {mm: mm, px: mm * pxPerMm};
    }
    ['animation', 'resize', 'update-viewport'].forEach(function (name) {
      viewer.addHandler(name, update);
    });
    update();
  }

  function onOpen(viewer, info) {
    var slide = viewer.world.getItemAt(0);
    state.widthPx = slide.getContentSize().x;
    slide.addHandler('fully-loaded-change', function (event) {
      state.tilesLoaded = event.fullyLoaded;
    });
    state.tilesLoaded = slide.getFullyLoaded();
    addOutlines(viewer, info);
    setupZoomTable(viewer, info, '#deposit-table tbody tr[data-index]', 'data-index',
      (info.report && info.report.deposits) || [], function () { return state.outlines || []; });
    setupZoomTable(viewer, info, '#candidate-table tbody tr[data-candidate-index]',
      'data-candidate-index', info.candidates || [],
      function () { return state.candidateOutlines || []; });
    setupScaleBar(viewer, info);
    state.focus = function (deposit) { focusDeposit(viewer, deposit, info.mpp); };  // for review.js
    addHeatmap(viewer, info).then(function () { state.ready = true; });
  }

  function start(info) {
    state.info = info;
    var viewer = OpenSeadragon({
      element: document.getElementById('osd'),
      prefixUrl: root.getAttribute('data-osd-images'),
      tileSources: info.dzi_url,
      showNavigator: true,
      navigatorPosition: 'TOP_RIGHT',
      maxZoomPixelRatio: 4,
      // The 2D canvas drawer: the WebGL one falls back to slow software rendering on
      // machines without a GPU (and in headless test browsers).
      drawer: 'canvas',
      gestureSettingsMouse: {clickToZoom: false}
    });
    state.viewer = viewer;
    viewer.addHandler('open-failed', function (event) {
      showMessage('The slide cannot be displayed: ' + (event.message || 'open failed'));
    });
    viewer.addOnceHandler('open', function () { onOpen(viewer, info); });
  }

  if (!root) {
    return;
  }
  if (typeof OpenSeadragon === 'undefined') {
    showMessage('OpenSeadragon did not load: run `npm ci` in the micromet repository, then reload.');
    return;
  }
  fetch(root.getAttribute('data-api-url'), {headers: {Accept: 'application/json'}})
    .then(function (response) {
      if (!response.ok) {
        throw new Error('HTTP ' + response.status);
      }
      return response.json();
    })
    .then(start)
    .catch(function (error) { showMessage('Cannot load the slide data: ' + error.message); });
})();
