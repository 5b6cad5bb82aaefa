// Once loaded: count images that failed (naturalWidth 0) and images no caption or card names,
// into <body data-…> for the headless check; outline broken ones in red for a human reader.
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  broken.forEach(function (i) { i.classList.add("broken"); });
  var unlabelled = imgs.filter(function (i) {
    var fig = i.closest("figure, .md-figure");
    var cap = fig && fig.querySelector("figcaption, .caption");
    return !(cap && cap.textContent.trim());
  });
  document.body.dataset.images = String(imgs.length);
  document.body.dataset.brokenImages = String(broken.length);
  document.body.dataset.unlabelledImages = String(unlabelled.length);
  document.body.dataset.loaded = "1";
});
