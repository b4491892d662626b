// Checks a .glb the way its users will see it, and prints one JSON object:
//   validation: the Khronos glTF validator's issue counts and messages;
//   three: the scene as three.js's GLTFLoader loads and animates it, at the listed frames:
//     per skinned mesh the world positions of the listed vertices and of its bones, and the
//     camera's world matrix (column-major) and vertical field of view (degrees).
// Usage: node services/render/exports/check_gltf.mjs scene.glb '{"frames": [0, 5], "vertices": [0, 100]}'
// (needs `npm install` at the repository root: gltf-validator and three).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

import * as THREE from "three";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";

const require = createRequire(import.meta.url);
const validator = require("gltf-validator");

const [path, optionsText] = process.argv.slice(2);
const options = JSON.parse(optionsText || "{}");
const frames = options.frames || [];
const vertexIndices = options.vertices || [];
const bytes = new Uint8Array(readFileSync(path));

const report = await validator.validateBytes(bytes, { maxIssues: 200, writeTimestamp: false });

const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
const gltf = await new GLTFLoader().parseAsync(buffer, "");
const scene = gltf.scene;
const clip = gltf.animations[0];
const mixer = new THREE.AnimationMixer(scene);
if (clip) {
  const action = mixer.clipAction(clip);
  action.setLoop(THREE.LoopOnce, 1);
  action.clampWhenFinished = true;
  action.play();
}
const times = clip ? clip.tracks[0].times : [0];

const meshes = [];
scene.traverse((o) => { if (o.isSkinnedMesh) meshes.push(o); });
let camera = null;
scene.traverse((o) => { if (o.isCamera && !camera) camera = o; });

const three = {
  skinned_meshes: meshes.map((m) => m.name),
  bones_per_mesh: meshes.map((m) => m.skeleton.bones.length),
  duration: clip ? clip.duration : 0,
  camera_fov: camera ? camera.fov : null,
  frames: [],
};
const v = new THREE.Vector3();
for (const frame of frames) {
  mixer.setTime(times[frame]);
  scene.updateMatrixWorld(true);
  const out = { frame, meshes: {} };
  for (const mesh of meshes) {
    const vertices = vertexIndices.map((i) => {
      mesh.getVertexPosition(i, v);
      return v.applyMatrix4(mesh.matrixWorld).toArray();
    });
    const bones = mesh.skeleton.bones.map((b) => new THREE.Vector3().setFromMatrixPosition(b.matrixWorld).toArray());
    out.meshes[mesh.name] = { vertices, bones };
  }
  if (camera) out.camera_matrix = camera.matrixWorld.toArray();
  three.frames.push(out);
}

const issues = report.issues;
console.log(JSON.stringify({
  validation: {
    errors: issues.numErrors,
    warnings: issues.numWarnings,
    infos: issues.numInfos,
    hints: issues.numHints,
    messages: issues.messages.map((m) => `${m.severity} ${m.code} ${m.pointer || ""}: ${m.message}`),
  },
  three,
}));
