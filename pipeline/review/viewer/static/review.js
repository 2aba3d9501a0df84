/* micromet viewer: the pathologist review of one slide. Confirm or reject each deposit (and each
   candidate for review: confirmed, it counts in the reviewed category; its outline turns solid), redraw
   its outline, draw a missed deposit (click its corners on the slide, Enter to finish), mark the
   review complete, with the reviewer's name and a note. Keys: n / p next / previous deposit,
   c confirm, x reject, Enter finish drawing, Esc cancel.
   Every edit is sent with the revision it was made on; when another tab saved first the server
   refuses it (409) and the message says so, with the current review shown. Coordinates are
   level-0 px, as in viewer.js. State for tests is on window.micrometReview. */
(function () {
  'use strict';

  var SVG_NS = 'http://www.w3.org/2000/svg';
  var TOKEN_KEY = 'micromet-review-token';
  var REVIEWER_KEY = 'micromet-reviewer';

  var root = document.getElementById('viewer-root');
  var panel = document.getElementById('review-panel');
  if (!root || !panel) {
    return;
  }
  var url = root.getAttribute('data-review-url');
  var review = {
    data: null,               // the review as /api/review gives it
    writable: root.getAttribute('data-review-writable') === 'true',
    selected: -1,             // index into data.deposits
    drawing: null,            // level-0 points of the outline being drawn
    drawingKey: null,         // the deposit being redrawn, null for a new one
    busy: false,
    saved: 0,                 // edits saved by this page (for tests)
    layer: null
  };
  window.micrometReview = review;

  function byId(id) {
    return document.getElementById(id);
  }

  function storage(key, value) {
    try {
      if (value === undefined) {
        return window.localStorage.getItem(key) || '';
      }
      window.localStorage.setItem(key, value);
    } catch (error) {
      return '';
    }
    return value;
  }

  function showMessage(text) {
    var element = byId('review-message');
    element.textContent = text;
    element.hidden = !text;
  }

  function badge(category) {
    var span = document.createElement('span');
    span.className = 'badge cat-' + category;
    span.textContent = category;
    return span;
  }

  function button(label, title, onClick) {
    var element = document.createElement('button');
    element.type = 'button';
    element.textContent = label;
    element.title = title;
    element.addEventListener('click', function (event) {
      event.stopPropagation();
      onClick();
    });
    return element;
  }

  // --- talking to the server ---------------------------------------------------------------

  function receive(response) {
    return response.json().then(function (body) {
      if (body.review) {
        render(body.review);
      }
      if (!response.ok) {
        throw new Error(body.error || ('HTTP ' + response.status));
      }
      return body;
    });
  }

  function load() {
    return fetch(url, {headers: {Accept: 'application/json'}})
      .then(receive)
      .catch(function (error) { showMessage('Cannot load the review: ' + error.message); });
  }

  function send(edit) {
    if (!review.writable || review.busy || !review.data) {
      return Promise.resolve();
    }
    var name = byId('reviewer-name').value.trim();
    if (!name) {
      showMessage('Enter your name as reviewer first: every edit is saved with it.');
      byId('reviewer-name').focus();
      return Promise.resolve();
    }
    storage(REVIEWER_KEY, name);
    review.busy = true;
    return fetch(url, {
      method: 'POST',
      headers: {'Content-Type': 'application/json', 'X-Micromet-Token': storage(TOKEN_KEY)},
      body: JSON.stringify({base_revision: review.data.revision, reviewer: name, edit: edit})
    })
      .then(receive)
      .then(function () {
        review.saved += 1;
        showMessage('');
      })
      .catch(function (error) { showMessage('Not saved: ' + error.message); })
      .then(function () { review.busy = false; });
  }

  // --- showing the review --------------------------------------------------------------------

  function sizeText(deposit) {
    return deposit.max_diameter_mm.toFixed(3) + ' mm';
  }

  function decisionButtons(deposit) {
    var cell = document.createElement('td');
    if (!review.writable) {
      return cell;
    }
    var automated = deposit.key.indexOf('deposit') === 0 || deposit.key.indexOf('candidate') === 0;
    if (automated) {
      cell.appendChild(button('✓', 'confirm (c)', function () {
        send({op: 'decide', key: deposit.key, decision: 'confirmed'});
      }));
    }
    cell.appendChild(button('✗', 'reject (x)', function () {
      send({op: 'decide', key: deposit.key, decision: 'rejected'});
    }));
    cell.appendChild(button('✎', 'redraw the outline', function () { startDrawing(deposit.key); }));
    if (!automated) {
      cell.appendChild(button('delete', 'delete this drawn deposit', function () {
        send({op: 'delete', key: deposit.key});
      }));
    }
    return cell;
  }

  function renderTable(data) {
    var body = panel.querySelector('#review-table tbody');
    body.textContent = '';
    data.deposits.forEach(function (deposit, index) {
      var row = document.createElement('tr');
      row.setAttribute('data-index', String(index));
      row.setAttribute('data-key', deposit.key);
      row.className = 'decision-' + deposit.decision + (index === review.selected ? ' selected' : '');
      row.tabIndex = 0;
      [deposit.key, null, sizeText(deposit), deposit.decision].forEach(function (text, column) {
        var cell = document.createElement('td');
        if (column === 1) {
          cell.appendChild(badge(deposit.category));
        } else {
          cell.textContent = text;
        }
        if (column === 3) {
          cell.className = 'decision';
        }
        row.appendChild(cell);
      });
      row.appendChild(decisionButtons(deposit));
      row.addEventListener('click', function () { select(index); });
      body.appendChild(row);
    });
  }

  function render(data) {
    review.data = data;
    if (review.selected >= data.deposits.length) {
      review.selected = data.deposits.length - 1;
    }
    var status = byId('review-status');
    status.textContent = data.revision === 0 ? 'not started' : 'review ' + data.status;
    status.className = 'badge ' + (data.status === 'complete' ? 'reviewed' : 'review-open');
    byId('review-category').replaceChildren(badge(data.reviewed_category));
    byId('review-automated').replaceChildren(badge(data.automated_category));
    var counts = data.counts;
    var candidates = (counts['confirmed candidates'] || 0) + (counts['rejected candidates'] || 0) +
      (counts['pending candidates'] || 0);
    byId('review-counts').textContent = counts.confirmed + ' confirmed, ' + counts.corrected +
      ' corrected, ' + counts.rejected + ' rejected, ' + counts.added + ' added, ' +
      counts.pending + ' pending' + (candidates ? '; candidates for review: ' +
      counts['confirmed candidates'] + ' confirmed, ' + counts['rejected candidates'] +
      ' rejected, ' + counts['pending candidates'] + ' pending' : '');
    var note = byId('review-note');
    if (document.activeElement !== note) {
      note.value = data.note;
    }
    byId('review-complete').hidden = data.status === 'complete';
    byId('review-reopen').hidden = data.status !== 'complete';
    renderTable(data);
    drawShapes();
  }

  // --- the slide layer: drawn outlines, rejected ones, the outline being drawn ----------------

  function svgElement(name, attributes) {
    var element = document.createElementNS(SVG_NS, name);
    Object.keys(attributes).forEach(function (key) { element.setAttribute(key, attributes[key]); });
    return element;
  }

  function pointsText(points) {
    return points.map(function (xy) { return xy[0] + ',' + xy[1]; }).join(' ');
  }

  function setupLayer() {
    var viewer = window.micromet.viewer;
    var svg = svgElement('svg', {'class': 'outline-layer review-layer'});
    var layer = svgElement('g', {});
    svg.appendChild(layer);
    viewer.canvas.appendChild(svg);
    review.layer = layer;
    function place() {
      var origin = viewer.viewport.pixelFromPoint(new OpenSeadragon.Point(0, 0), true);
      var one = viewer.viewport.deltaPixelsFromPointsNoRotate(new OpenSeadragon.Point(1, 0), true).x;
      layer.setAttribute('transform', 'translate(' + origin.x + ' ' + origin.y + ') scale(' +
        one / window.micromet.widthPx + ')');
    }
    ['animation', 'resize', 'update-viewport'].forEach(function (name) { viewer.addHandler(name, place); });
    place();
    viewer.addHandler('canvas-click', onCanvasClick);
    drawShapes();
  }

  // The viewer's outline group of automated deposit "deposit N" or candidate "candidate N",
  // null for a drawn deposit.
  function automatedGroup(key) {
    var info = window.micromet.info;
    var sources = [
      ['deposit ', (info.report && info.report.deposits) || [], window.micromet.outlines || []],
      ['candidate ', info.candidates || [], window.micromet.candidateOutlines || []]
    ];
    for (var s = 0; s < sources.length; s++) {
      for (var i = 0; i < sources[s][1].length; i++) {
        if (sources[s][0] + sources[s][1][i].id === key) {
          return sources[s][2][i] || null;
        }
      }
    }
    return null;
  }

  function drawShapes() {
    if (!review.layer || !review.data) {
      return;
    }
    review.layer.textContent = '';
    review.data.deposits.forEach(function (deposit, index) {
      var group = automatedGroup(deposit.key);
      if (group) {
        group.classList.toggle('rejected', deposit.decision === 'rejected');
        group.classList.toggle('confirmed', deposit.decision === 'confirmed');
        group.classList.toggle('selected', index === review.selected);
      }
      if (!group || deposit.decision === 'corrected') {
        var shape = svgElement('polygon', {points: pointsText(deposit.outline_xy),
          'class': 'drawn decision-' + deposit.decision + (index === review.selected ? ' selected' : '')});
        review.layer.appendChild(shape);
      }
    });
    if (review.drawing && review.drawing.length) {
      review.layer.appendChild(svgElement('polyline', {points: pointsText(review.drawing), 'class': 'draft'}));
    }
  }

  // --- drawing ------------------------------------------------------------------------------

  function startDrawing(key) {
    if (!review.writable || !review.layer) {
      return;
    }
    review.drawing = [];
    review.drawingKey = key || null;
    byId('review-draw-finish').hidden = false;
    byId('review-draw-cancel').hidden = false;
    byId('review-draw').hidden = true;
    showMessage(key ? 'Redrawing ' + key + ': click its corners on the slide, then Enter.'
      : 'Drawing a missed deposit: click its corners on the slide, then Enter.');
  }

  function stopDrawing() {
    review.drawing = null;
    review.drawingKey = null;
    byId('review-draw-finish').hidden = true;
    byId('review-draw-cancel').hidden = true;
    byId('review-draw').hidden = false;
    drawShapes();
  }

  function finishDrawing() {
    var points = review.drawing || [];
    if (points.length < 3) {
      showMessage('An outline needs at least 3 points; keep clicking, or Esc to cancel.');
      return;
    }
    var edit = review.drawingKey ? {op: 'redraw', key: review.drawingKey, outline_xy: points}
      : {op: 'draw', outline_xy: points};
    stopDrawing();
    send(edit);
  }

  function onCanvasClick(event) {
    if (!review.drawing || !event.quick) {
      return;
    }
    event.preventDefaultAction = true;
    var point = window.micromet.viewer.viewport.pointFromPixel(event.position, true);
    var width = window.micromet.widthPx;
    review.drawing.push([Math.round(point.x * width * 10) / 10, Math.round(point.y * width * 10) / 10]);
    drawShapes();
  }

  // --- selection and keys ---------------------------------------------------------------------

  function select(index) {
    if (!review.data || index < 0 || index >= review.data.deposits.length) {
      return;
    }
    review.selected = index;
    var rows = panel.querySelectorAll('#review-table tbody tr');
    Array.prototype.forEach.call(rows, function (row, i) { row.classList.toggle('selected', i === index); });
    rows[index].scrollIntoView({block: 'nearest'});
    drawShapes();
    if (window.micromet.focus) {
      window.micromet.focus({outline_xy: review.data.deposits[index].outline_xy,
        id: review.data.deposits[index].key});
    }
  }

  function decideSelected(decision) {
    var deposit = review.data && review.data.deposits[review.selected];
    if (!deposit) {
      return;
    }
    if (decision === 'confirmed' && deposit.key.indexOf('drawn') === 0) {
      decision = 'added';
    }
    send({op: 'decide', key: deposit.key, decision: decision});
  }

  function onKey(event) {
    var target = event.target;
    if (target && (target.tagName === 'INPUT' || target.tagName === 'TEXTAREA') ||
        event.ctrlKey || event.metaKey || event.altKey) {
      return;
    }
    var count = review.data ? review.data.deposits.length : 0;
    var actions = {
      n: function () { select(review.selected < 0 ? 0 : (review.selected + 1) % count); },
      p: function () { select(review.selected <= 0 ? count - 1 : review.selected - 1); },
      c: function () { decideSelected('confirmed'); },
      x: function () { decideSelected('rejected'); },
      Enter: function () { if (review.drawing) { finishDrawing(); } },
      Escape: function () { if (review.drawing) { stopDrawing(); showMessage(''); } }
    };
    var action = actions[event.key];
    if (action && (count || event.key === 'Enter' || event.key === 'Escape')) {
      event.preventDefault();
      action();
    }
  }

  function setupEditor() {
    if (!review.writable) {
      return;
    }
    byId('review-editor').hidden = false;
    var name = byId('reviewer-name');
    name.value = storage(REVIEWER_KEY);
    byId('review-draw').addEventListener('click', function () { startDrawing(null); });
    byId('review-draw-finish').addEventListener('click', finishDrawing);
    byId('review-draw-cancel').addEventListener('click', function () { stopDrawing(); showMessage(''); });
    byId('review-complete').addEventListener('click', function () {
      send({op: 'status', status: 'complete', note: byId('review-note').value});
    });
    byId('review-reopen').addEventListener('click', function () {
      send({op: 'status', status: 'in progress', note: byId('review-note').value});
    });
    byId('review-note').addEventListener('change', function () {
      send({op: 'status', status: review.data.status, note: byId('review-note').value});
    });
    if (!storage(TOKEN_KEY)) {
      showMessage('To save edits, open the link with ?token= that `micromet view --review` printed.');
    }
  }

  function whenViewerReady() {
    if (window.micromet && window.micromet.ready && typeof OpenSeadragon !== 'undefined') {
      setupLayer();
      return;
    }
    window.setTimeout(whenViewerReady, 100);
  }

  setupEditor();
  document.addEventListener('keydown', onKey);
  load().then(whenViewerReady);
})();
