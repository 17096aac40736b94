// The Devices tab's import result: the credentials shown once, saved as a CSV file made in the page (nothing is
// fetched again: the server keeps only hashes). Without JavaScript the text box and its Copy button remain.
(function () {
  "use strict";

  document.querySelectorAll("[data-download-from]").forEach(function (button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      var source = document.getElementById(button.getAttribute("data-download-from"));
      if (!source) { return; }
      var blob = new Blob([source.value + "\n"], { type: "text/csv" });
      var link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = button.getAttribute("data-filename") || "credentials.csv";
      document.body.appendChild(link);
      link.click();
      document.body.removeChild(link);
      setTimeout(function () { URL.revokeObjectURL(link.href); }, 1000);
    });
  });
})();
