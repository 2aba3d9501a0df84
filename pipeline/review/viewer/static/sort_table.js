/* micromet: click (or press Enter on) a column heading of a table.sortable to sort its rows.
   A heading's data-sort is "number" or "text"; a cell's data-sort-value overrides its text.
   Numbers sort largest first on the first click, text A-Z; a second click reverses. */
(function () {
  'use strict';

  function cellValue(row, index, type) {
    var cell = row.cells[index];
    var raw = cell ? cell.getAttribute('data-sort-value') : null;
    if (raw === null) {
      raw = cell ? cell.textContent : '';
    }
    if (type === 'number') {
      var number = parseFloat(raw);
      return isNaN(number) ? -Infinity : number;
    }
    return raw.trim().toLowerCase();
  }

  function sortBy(table, index, type, header) {
    var current = header.getAttribute('aria-sort');
    var descending = current ? current === 'ascending' : type === 'number';
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, index, type);
      var y = cellValue(b, index, type);
      var order = x < y ? -1 : (x > y ? 1 : 0);
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(header.parentNode.cells, function (cell) {
      cell.removeAttribute('aria-sort');
    });
    header.setAttribute('aria-sort', descending ? 'descending' : 'ascending');
  }

  function setup(table) {
    if (!table.tHead || !table.tBodies.length) {
      return;
    }
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, index) {
      var type = header.getAttribute('data-sort');
      if (!type) {
        return;
      }
      header.tabIndex = 0;
      header.classList.add('sort-header');
      header.addEventListener('click', function () { sortBy(table, index, type, header); });
      header.addEventListener('keydown', function (event) {
        if (event.key === 'Enter' || event.key === ' ') {
          event.preventDefault();
          sortBy(table, index, type, header);
        }
      });
    });
  }

  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), setup);
})();
