SUMMARY = "PP-ShiTuV2 product recognition served over MQTT"
DESCRIPTION = "shitu-edge finds items in a camera frame (PicoDet), computes \
               a 512-d feature (PPLCNetV2) and looks it up in a faiss gallery, \
               answering line controllers over MQTT, as a hardened systemd service."
HOMEPAGE = "https://shitu-edge.invalid/"
BUGTRACKER = "https://shitu-edge.invalid/issues"
SECTION = "multimedia"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=22a53954e4e0ec258dfce4391e905dac"

# opencv: the crate's bindings are generated against the target OpenCV with
# libclang (meta-clang). faiss is built from source (static) with cmake and
# links BLAS/LAPACK. GStreamer (cameras) is linked, found with pkg-config.
# ONNX Runtime and CUDA are opened at run time (ort load-dynamic, cudarc
# dynamic-loading), so they are run-time dependencies only.
DEPENDS = "clang-native cmake-native openblas opencv gstreamer1.0 gstreamer1.0-plugins-base"

# The project's own tree. The project has no public home yet: a BSP sets
# SHITU_EDGE_GIT and a fixed SRCREV (release builds must not use AUTOREV)
# for its mirror of the repository, in local.conf or a bbappend.
SHITU_EDGE_GIT ??= "git://shitu-edge.invalid/shitu-edge.git;protocol=https;branch=main"
SRC_URI = "${SHITU_EDGE_GIT}"
SRCREV ??= "${AUTOREV}"

S = "${WORKDIR}/git"

require shitu-edge-crates.inc

inherit cargo cargo-update-recipe-crates systemd useradd pkgconfig

# Only the daemon/CLI binary; the benches and tests stay out of the image.
CARGO_BUILD_FLAGS += "--bin shitud"

SYSTEMD_SERVICE:${PN} = "shitu-edge.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system video"
USERADD_PARAM:${PN} = "--system --home-dir ${localstatedir}/lib/shitu-edge --no-create-home \
                       --shell ${base_sbindir}/nologin --user-group --groups video shitu-edge"

do_install:append() {
    install -d ${D}${systemd_system_unitdir} ${D}${sysconfdir}/shitu-edge \
        ${D}${nonarch_libdir}/sysusers.d ${D}${nonarch_libdir}/tmpfiles.d \
        ${D}${datadir}/shitu-edge/engines ${D}${docdir}/${PN} \
        ${D}${sysconfdir}/mosquitto/conf.d
    install -m 0644 ${S}/systemd/shitu-edge.service ${D}${systemd_system_unitdir}/
    install -m 0644 ${S}/systemd/shitu-edge.sysusers ${D}${nonarch_libdir}/sysusers.d/shitu-edge.conf
    install -m 0644 ${S}/systemd/shitu-edge.tmpfiles ${D}${nonarch_libdir}/tmpfiles.d/shitu-edge.conf
    install -m 0644 ${S}/systemd/config.toml ${D}${sysconfdir}/shitu-edge/config.toml
    # The image's ONNX Runtime (with the CUDA and TensorRT providers) is the system one.
    sed -i -e 's#^ort_library = .*#ort_library = "${libdir}/libonnxruntime.so"#' \
        ${D}${sysconfdir}/shitu-edge/config.toml
    install -m 0644 ${S}/engines/demo/det_prenms.onnx ${S}/engines/demo/rec.onnx ${D}${datadir}/shitu-edge/engines/
    install -m 0644 ${S}/docs/MQTT.md ${S}/config/shitu-edge.toml ${D}${docdir}/${PN}/
    # The broker settings the delivery guarantees rely on, for an image that
    # runs the line's mosquitto (read from its conf.d; inert without it).
    install -m 0644 ${S}/config/mosquitto.conf ${D}${sysconfdir}/mosquitto/conf.d/shitu-edge.conf
}

FILES:${PN} += "${systemd_system_unitdir}/shitu-edge.service \
                 ${nonarch_libdir}/sysusers.d/shitu-edge.conf \
                 ${nonarch_libdir}/tmpfiles.d/shitu-edge.conf"
CONFFILES:${PN} = "${sysconfdir}/shitu-edge/config.toml ${sysconfdir}/mosquitto/conf.d/shitu-edge.conf"

# ONNX Runtime is dlopen()ed; the CUDA libraries only with the cuda or
# tensorrt provider, named as meta-tegra names them.
# Cameras: rtspsrc, v4l2src and the RTP depayloaders (good), videoconvert,
# decodebin and appsink (base), H.264/H.265 parsers (bad). Decoders: libav
# here; a Jetson image adds meta-tegra's gstreamer1.0-plugins-nvvideo4linux2
# (nvv4l2decoder) and nvarguscamerasrc. gstreamer1.0-libav carries
# LICENSE_FLAGS = "commercial": recommended, so an image that does not
# accept the flag still builds (and decodes with the hardware or openh264).
RDEPENDS:${PN} = "onnxruntime opencv gstreamer1.0 gstreamer1.0-plugins-base-app \
                  gstreamer1.0-plugins-base-videoconvertscale gstreamer1.0-plugins-base-playback \
                  gstreamer1.0-plugins-good-rtsp gstreamer1.0-plugins-good-rtp \
                  gstreamer1.0-plugins-good-rtpmanager gstreamer1.0-plugins-good-udp \
                  gstreamer1.0-plugins-good-video4linux2 gstreamer1.0-plugins-bad-videoparsersbad"
RRECOMMENDS:${PN} = "gstreamer1.0-libav ${@bb.utils.contains('MACHINE_FEATURES', 'cuda', 'cuda-cudart cuda-nvrtc libcublas cudnn tensorrt-core tensorrt-plugins', '', d)}"
