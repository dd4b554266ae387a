"""Guide snippet "PatternDetector": the printed values equal the detector's own, computed here."""

from __future__ import annotations

from healing.analysis import PatternDetector


def test_detector_prints_the_guide_fields(guide_dir) -> None:
    proc = guide_dir.run("pattern_detector")
    assert proc.returncode == 0, proc.stderr
    detector = PatternDetector(guide_dir.cwd / "kernel.rts.png")
    sobel, canny = detector.detect_edges_sobel(), detector.detect_edges_canny(50, 150)
    fourier = detector.analyze_fourier(10)
    clusters = detector.detect_clusters(eps=5.0, min_samples=10, feature_type="position")
    expected = [f"Edges: {sobel.edge_count}", f"Density: {sobel.edge_density:.2%}", f"Edges: {canny.edge_count}",
                "Strong edges: 100", f"Dominant frequency: {fourier.dominant_frequency}",
                f"Periodic patterns: {fourier.has_periodic_patterns}", f"Clusters: {clusters.num_clusters}",
                f"Noise points: {clusters.noise_points}"]
    expected += [f"  ROI: {r['description']} (confidence: {r['confidence']:.2%})" for r in clusters.regions_of_interest]
    assert proc.stdout.splitlines() == expected
    assert clusters.num_clusters == len(clusters.regions_of_interest) > 0
    assert sobel.edge_count > 0 and canny.edge_count > 0
