// The live view: a server-sent-events tail of delivery attempts. No inline
// script anywhere (the Content-Security-Policy forbids it).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var status = document.getElementById("live-status");
  var table = document.getElementById("live");
  if (!status || !table) return;
  var endpoint = status.getAttribute("data-endpoint");
  var url = "/live/events" + (endpoint ? "?endpoint=" + encodeURIComponent(endpoint) : "");
  var body = table.tBodies[0];
  var source = new EventSource(url);
  source.addEventListener("open", function () {
    status.textContent = "Connected: attempts appear here as they finish.";
    status.setAttribute("data-connected", "1");
  });
  source.addEventListener("error", function () {
    status.textContent = "Disconnected; reconnecting…";
  });
  source.addEventListener("delivery", function (e) {
    var d = JSON.parse(e.data);
    var row = body.insertRow(0);
    row.className = "state-" + d.state;
    var link = document.createElement("a");
    link.href = "/endpoints/" + encodeURIComponent(d.endpoint_id) + "/deliveries/" + d.offset;
    link.textContent = d.offset;
    var cells = [d.time, d.endpoint_id, null, d.event_id, d.event_type, d.state, d.attempts,
                 d.last_status || "", d.last_error];
    cells.forEach(function (text, i) {
      var cell = row.insertCell(-1);
      if (i === 2) cell.appendChild(link); else cell.textContent = text;
    });
    while (body.rows.length > 500) body.deleteRow(-1);
  });
});
