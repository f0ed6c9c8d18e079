package k8s_test

// Tests of the Kubernetes manifests under k8s/: every YAML document decodes
// strictly into its Kubernetes API type, the kustomizations build, and the
// rendered objects follow the production rules in checkManifests. The table
// test at the end feeds broken manifests to the same checker, so a rule that
// stops firing fails CI too.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	kustypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

const (
	baseDir          = "base"
	exampleOverlay   = "overlays/example"
	helmValuesFile   = "nats/values.yaml"
	secretExample    = "secret.example.yaml"
	webhookPrefix    = "/webhooks/krea/"
	overlayNS        = "kreabus"
	nonRootUID       = int64(65532)
	adminPortName    = "admin"
	adminPort        = int32(9090)
	webhookPort      = int32(8080)
	natsClientPort   = int32(4222)
	dnsPort          = int32(53)
	httpsPort        = int32(443)
	bridgeCommand    = "/bridge"
	submitterCommand = "/submitter"
	mirrorCommand    = "/mirror"
)

// ---------------------------------------------------------------------------
// Strict decoding
// ---------------------------------------------------------------------------

// kinds maps "apiVersion/kind" to the Go type a document must decode into.
// Anything else under k8s/ is an error: add the type here when a new kind is
// really wanted.
var kinds = map[string]func() any{
	"v1/Namespace":       func() any { return new(corev1.Namespace) },
	"v1/ServiceAccount":  func() any { return new(corev1.ServiceAccount) },
	"v1/ConfigMap":       func() any { return new(corev1.ConfigMap) },
	"v1/Secret":          func() any { return new(corev1.Secret) },
	"v1/Service":         func() any { return new(corev1.Service) },
	"apps/v1/Deployment": func() any { return new(appsv1.Deployment) },
	"monitoring.coreos.com/v1/PrometheusRule":       func() any { return new(prometheusRuleObject) },
	"networking.k8s.io/v1/Ingress":                  func() any { return new(networkingv1.Ingress) },
	"networking.k8s.io/v1/NetworkPolicy":            func() any { return new(networkingv1.NetworkPolicy) },
	"policy/v1/PodDisruptionBudget":                 func() any { return new(policyv1.PodDisruptionBudget) },
	"autoscaling/v2/HorizontalPodAutoscaler":        func() any { return new(autoscalingv2.HorizontalPodAutoscaler) },
	"kustomize.config.k8s.io/v1beta1/Kustomization": func() any { return new(kustypes.Kustomization) },
}

// decodeStrict decodes one YAML document into out, refusing unknown fields,
// duplicate keys and fields spelled with the wrong case. encoding/json alone
// (even with DisallowUnknownFields) matches field names case-insensitively
// and would accept "readinessprobe:"; sigs.k8s.io/json is the case-sensitive
// decoder the API server itself uses for strict field validation.
func decodeStrict(doc []byte, out any) error {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strictErrs, err := sigsjson.UnmarshalStrict(js, out, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

// decodeObject decodes a document into the API type named by its apiVersion
// and kind.
func decodeObject(doc []byte) (any, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	newObj, ok := kinds[tm.APIVersion+"/"+tm.Kind]
	if !ok {
		return nil, fmt.Errorf("unknown kind %q (apiVersion %q)", tm.Kind, tm.APIVersion)
	}
	obj := newObj()
	if err := decodeStrict(doc, obj); err != nil {
		return nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	return obj, nil
}

// splitDocs splits a multi-document YAML stream, dropping empty documents.
func splitDocs(data []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, err
		}
		if s := strings.TrimSpace(string(js)); s == "null" || s == "" {
			continue
		}
		docs = append(docs, doc)
	}
}

// manifests is a set of decoded objects, by kind.
type manifests struct {
	deployments     []*appsv1.Deployment
	services        []*corev1.Service
	ingresses       []*networkingv1.Ingress
	networkPolicies []*networkingv1.NetworkPolicy
	pdbs            []*policyv1.PodDisruptionBudget
	hpas            []*autoscalingv2.HorizontalPodAutoscaler
	configMaps      []*corev1.ConfigMap
	serviceAccounts []*corev1.ServiceAccount
	namespaces      []*corev1.Namespace
	secrets         []*corev1.Secret
}

func (m *manifests) add(obj any) error {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		m.deployments = append(m.deployments, o)
	case *corev1.Service:
		m.services = append(m.services, o)
	case *networkingv1.Ingress:
		m.ingresses = append(m.ingresses, o)
	case *networkingv1.NetworkPolicy:
		m.networkPolicies = append(m.networkPolicies, o)
	case *policyv1.PodDisruptionBudget:
		m.pdbs = append(m.pdbs, o)
	case *autoscalingv2.HorizontalPodAutoscaler:
		m.hpas = append(m.hpas, o)
	case *corev1.ConfigMap:
		m.configMaps = append(m.configMaps, o)
	case *corev1.ServiceAccount:
		m.serviceAccounts = append(m.serviceAccounts, o)
	case *corev1.Namespace:
		m.namespaces = append(m.namespaces, o)
	case *corev1.Secret:
		m.secrets = append(m.secrets, o)
	default:
		return fmt.Errorf("%T is not a deployable kind", obj)
	}
	return nil
}

// parseManifests decodes a YAML stream of Kubernetes objects strictly.
func parseManifests(data []byte) (*manifests, error) {
	docs, err := splitDocs(data)
	if err != nil {
		return nil, err
	}
	m := &manifests{}
	for i, doc := range docs {
		obj, err := decodeObject(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if err := m.add(obj); err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
	}
	return m, nil
}

// build runs kustomize on a kustomization directory, as `kubectl apply -k`
// would.
func build(t testing.TB, dir string) []byte {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	res, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := res.AsYaml()
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	return out
}

// ---------------------------------------------------------------------------
// The rules
// ---------------------------------------------------------------------------

type checkOptions struct {
	// namespace every namespaced object must carry; "" for a namespace-less
	// base.
	namespace string
}

type checker struct {
	m    *manifests
	opts checkOptions
	errs []error
}

func (c *checker) errorf(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf(format, args...))
}

// checkManifests applies the kreabus production rules to a complete,
// rendered set of objects and returns every violation.
func checkManifests(m *manifests, opts checkOptions) []error {
	c := &checker{m: m, opts: opts}
	c.checkSecretsAndConfig()
	c.checkWorkloads()
	c.checkServices()
	c.checkIngress()
	c.checkAvailability()
	c.checkNetworkPolicies()
	c.checkNamespaces()
	return c.errs
}

// component tells the programs apart by the command they run.
func component(d *appsv1.Deployment) string {
	for _, ctr := range d.Spec.Template.Spec.Containers {
		if len(ctr.Command) > 0 {
			switch ctr.Command[0] {
			case bridgeCommand:
				return "bridge"
			case submitterCommand:
				return "submitter"
			case mirrorCommand:
				return "mirror"
			}
		}
	}
	return ""
}

func (c *checker) deployment(comp string) *appsv1.Deployment {
	for _, d := range c.m.deployments {
		if component(d) == comp {
			return d
		}
	}
	return nil
}

// selects reports whether a label selector picks the given pod labels. An
// empty selector picks every pod (NetworkPolicy semantics); a nil one none.
func selects(sel *metav1.LabelSelector, podLabels map[string]string) bool {
	if sel == nil {
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return false
	}
	return s.Matches(labels.Set(podLabels))
}

func subset(sel, podLabels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if podLabels[k] != v {
			return false
		}
	}
	return true
}

var (
	// Names of settings that hold secrets. NATS_CREDS, NATS_NKEY and NATS_KEY
	// name files, handled by fileSettings.
	secretName = regexp.MustCompile(`(?i)(SECRET|TOKEN|PASSWORD|PASSWD|API_?KEY|PRIVATE|CREDENTIAL)`)
	// Settings whose value is the path of a credentials file.
	fileSettings = map[string]bool{"NATS_CREDS": true, "NATS_NKEY": true, "NATS_KEY": true}
	// Values that look like key material whatever their name.
	secretValue = regexp.MustCompile(`-----BEGIN|^S[UAO][A-Z2-7]{56}$|^eyJ[A-Za-z0-9_-]{10,}\.|^(ghp|gho|sk|xox[bp])[-_]`)
)

func (c *checker) checkSecretsAndConfig() {
	for _, s := range c.m.secrets {
		c.errorf("Secret %s is part of the manifests: secrets are created out of band (see k8s/README.md), never committed", s.Name)
	}
	for _, cm := range c.m.configMaps {
		for k, v := range cm.Data {
			if secretName.MatchString(k) {
				c.errorf("ConfigMap %s: key %s looks like a secret; use a Secret and secretKeyRef", cm.Name, k)
			}
			if fileSettings[k] {
				c.errorf("ConfigMap %s: %s names a credentials file; set it next to the secret volume mount", cm.Name, k)
			}
			if secretValue.MatchString(v) {
				c.errorf("ConfigMap %s: value of %s looks like key material", cm.Name, k)
			}
		}
		for k := range cm.BinaryData {
			c.errorf("ConfigMap %s: binaryData %s is not reviewable; use data", cm.Name, k)
		}
	}
	// KREABUS_PUBLIC_URL must be https on the Ingress host, or Krea posts
	// webhooks nowhere.
	for _, cm := range c.m.configMaps {
		raw, ok := cm.Data["KREABUS_PUBLIC_URL"]
		if !ok {
			continue
		}
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			c.errorf("ConfigMap %s: KREABUS_PUBLIC_URL %q must be https://<ingress host>", cm.Name, raw)
			continue
		}
		found := false
		for _, ing := range c.m.ingresses {
			for _, r := range ing.Spec.Rules {
				if r.Host == u.Hostname() {
					found = true
				}
			}
		}
		if !found {
			c.errorf("ConfigMap %s: KREABUS_PUBLIC_URL host %q is not an Ingress host", cm.Name, u.Hostname())
		}
	}
}

func (c *checker) configMap(name string) *corev1.ConfigMap {
	for _, cm := range c.m.configMaps {
		if cm.Name == name {
			return cm
		}
	}
	return nil
}

func (c *checker) checkWorkloads() {
	if c.deployment("bridge") == nil {
		c.errorf("no Deployment runs %s", bridgeCommand)
	}
	if c.deployment("submitter") == nil {
		c.errorf("no Deployment runs %s", submitterCommand)
	}
	if c.deployment("mirror") == nil {
		c.errorf("no Deployment runs %s", mirrorCommand)
	}
	for _, d := range c.m.deployments {
		name := "Deployment " + d.Name
		if !subset(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
			c.errorf("%s: selector %v does not match the pod template labels", name, d.Spec.Selector.MatchLabels)
		}
		if d.Spec.Replicas == nil {
			c.errorf("%s: replicas not set", name)
		}
		st := d.Spec.Strategy
		if st.Type != appsv1.RollingUpdateDeploymentStrategyType || st.RollingUpdate == nil ||
			st.RollingUpdate.MaxUnavailable == nil || st.RollingUpdate.MaxUnavailable.String() != "0" {
			c.errorf("%s: strategy must be RollingUpdate with maxUnavailable 0", name)
		}
		if component(d) == "bridge" && (d.Spec.Replicas == nil || *d.Spec.Replicas < 2) {
			c.errorf("%s: the bridge needs at least 2 replicas", name)
		}
		c.checkPod(name, &d.Spec.Template.Spec, d.Spec.Replicas)
	}
}

func (c *checker) checkPod(name string, pod *corev1.PodSpec, replicas *int32) {
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		c.errorf("%s: automountServiceAccountToken must be false", name)
	}
	if pod.ServiceAccountName == "" || pod.ServiceAccountName == "default" {
		c.errorf("%s: needs a dedicated serviceAccountName", name)
	} else {
		var sa *corev1.ServiceAccount
		for _, s := range c.m.serviceAccounts {
			if s.Name == pod.ServiceAccountName {
				sa = s
			}
		}
		switch {
		case sa == nil:
			c.errorf("%s: ServiceAccount %s is not in the manifests", name, pod.ServiceAccountName)
		case sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken:
			c.errorf("ServiceAccount %s: automountServiceAccountToken must be false", sa.Name)
		}
	}
	if pod.HostNetwork || pod.HostPID || pod.HostIPC {
		c.errorf("%s: host namespaces are not allowed", name)
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || *g < 10 || *g > 120 {
		c.errorf("%s: terminationGracePeriodSeconds must be set (10..120)", name)
	}
	psc := pod.SecurityContext
	if psc == nil {
		c.errorf("%s: pod securityContext missing", name)
		psc = &corev1.PodSecurityContext{}
	}
	if psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		c.errorf("%s: pod securityContext.runAsNonRoot must be true", name)
	}
	if psc.RunAsUser == nil || *psc.RunAsUser != nonRootUID {
		c.errorf("%s: pod securityContext.runAsUser must be %d", name, nonRootUID)
	}
	if psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		c.errorf("%s: pod securityContext.seccompProfile must be RuntimeDefault", name)
	}
	if replicas != nil && *replicas > 1 && len(pod.TopologySpreadConstraints) == 0 &&
		(pod.Affinity == nil || pod.Affinity.PodAntiAffinity == nil) {
		c.errorf("%s: several replicas need topologySpreadConstraints or podAntiAffinity", name)
	}
	secretVolumes := map[string]bool{}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			c.errorf("%s: hostPath volume %s is not allowed", name, v.Name)
		}
		if v.Secret != nil {
			secretVolumes[v.Name] = true
		}
	}
	if len(pod.Containers) == 0 {
		c.errorf("%s: no containers", name)
	}
	for i := range pod.InitContainers {
		c.checkContainer(name, &pod.InitContainers[i], psc, secretVolumes, false)
	}
	for i := range pod.Containers {
		c.checkContainer(name, &pod.Containers[i], psc, secretVolumes, true)
	}
}

// imageTag returns the tag of an image reference ("" when it has none).
func imageTag(image string) (tag, digest string) {
	if i := strings.Index(image, "@"); i >= 0 {
		image, digest = image[:i], image[i+1:]
	}
	last := image[strings.LastIndex(image, "/")+1:]
	if i := strings.LastIndex(last, ":"); i >= 0 {
		tag = last[i+1:]
	}
	return tag, digest
}

func (c *checker) checkContainer(pod string, ctr *corev1.Container, psc *corev1.PodSecurityContext, secretVolumes map[string]bool, serving bool) {
	name := fmt.Sprintf("%s container %s", pod, ctr.Name)

	tag, digest := imageTag(ctr.Image)
	switch {
	case ctr.Image == "":
		c.errorf("%s: no image", name)
	case tag == "latest":
		c.errorf("%s: image %s uses :latest; pin a version tag", name, ctr.Image)
	case tag == "" && digest == "":
		c.errorf("%s: image %s has no tag; pin a version tag", name, ctr.Image)
	}

	if serving {
		ports := map[string]int32{}
		for _, p := range ctr.Ports {
			ports[p.Name] = p.ContainerPort
		}
		if ports[adminPortName] != adminPort {
			c.errorf("%s: needs container port %q = %d", name, adminPortName, adminPort)
		}
		c.checkProbe(name, "livenessProbe", ctr.LivenessProbe, "/healthz")
		c.checkProbe(name, "readinessProbe", ctr.ReadinessProbe, "/readyz")
		if ctr.StartupProbe != nil {
			c.checkProbe(name, "startupProbe", ctr.StartupProbe, "/healthz")
		}
	}

	for _, kind := range []struct {
		list corev1.ResourceList
		what string
	}{{ctr.Resources.Requests, "requests"}, {ctr.Resources.Limits, "limits"}} {
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			q, ok := kind.list[r]
			if !ok || q.IsZero() {
				c.errorf("%s: resources.%s.%s missing", name, kind.what, r)
			}
		}
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, lim := ctr.Resources.Requests[r], ctr.Resources.Limits[r]
		if !req.IsZero() && !lim.IsZero() && req.Cmp(lim) > 0 {
			c.errorf("%s: resources.requests.%s above the limit", name, r)
		}
	}

	sc := ctr.SecurityContext
	if sc == nil {
		c.errorf("%s: container securityContext missing", name)
		sc = &corev1.SecurityContext{}
	}
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		c.errorf("%s: securityContext.runAsNonRoot must be true", name)
	}
	uid := psc.RunAsUser
	if sc.RunAsUser != nil {
		uid = sc.RunAsUser
	}
	if uid == nil || *uid == 0 {
		c.errorf("%s: must run as a non-zero runAsUser", name)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		c.errorf("%s: securityContext.readOnlyRootFilesystem must be true", name)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		c.errorf("%s: securityContext.allowPrivilegeEscalation must be false", name)
	}
	if sc.Privileged != nil && *sc.Privileged {
		c.errorf("%s: privileged is not allowed", name)
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		c.errorf("%s: securityContext.capabilities.drop must contain ALL", name)
	} else if len(sc.Capabilities.Add) > 0 {
		c.errorf("%s: securityContext.capabilities.add must be empty", name)
	}
	if sc.SeccompProfile != nil && sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		c.errorf("%s: seccompProfile must be RuntimeDefault", name)
	}

	// Secrets: from Secrets, never in plain env or a ConfigMap.
	mounts := map[string]string{} // mount path -> volume
	for _, vm := range ctr.VolumeMounts {
		mounts[vm.MountPath] = vm.Name
	}
	for _, e := range ctr.Env {
		switch {
		case fileSettings[e.Name]:
			if e.ValueFrom != nil || !filepath.IsAbs(e.Value) {
				c.errorf("%s: %s must be the absolute path of a file in a secret volume", name, e.Name)
				continue
			}
			inSecret := false
			for path, vol := range mounts {
				if strings.HasPrefix(e.Value, strings.TrimSuffix(path, "/")+"/") && secretVolumes[vol] {
					inSecret = true
				}
			}
			if !inSecret {
				c.errorf("%s: %s=%s is not inside a mounted secret volume", name, e.Name, e.Value)
			}
		case secretName.MatchString(e.Name):
			if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
				c.errorf("%s: env %s must come from a secretKeyRef, not a plain value", name, e.Name)
			}
		}
		if secretValue.MatchString(e.Value) {
			c.errorf("%s: env %s holds what looks like key material", name, e.Name)
		}
	}
	for _, ef := range ctr.EnvFrom {
		switch {
		case ef.SecretRef != nil:
			c.errorf("%s: envFrom secretRef %s: map secret keys one by one with secretKeyRef", name, ef.SecretRef.Name)
		case ef.ConfigMapRef != nil:
			if c.configMap(ef.ConfigMapRef.Name) == nil {
				c.errorf("%s: envFrom ConfigMap %s is not in the manifests", name, ef.ConfigMapRef.Name)
			}
		}
	}
}

func (c *checker) checkProbe(name, which string, p *corev1.Probe, path string) {
	if p == nil {
		c.errorf("%s: %s missing", name, which)
		return
	}
	if p.HTTPGet == nil {
		c.errorf("%s: %s must be an httpGet", name, which)
		return
	}
	if p.HTTPGet.Path != path {
		c.errorf("%s: %s path %q, want %q", name, which, p.HTTPGet.Path, path)
	}
	if p.HTTPGet.Port.String() != adminPortName {
		c.errorf("%s: %s must use the port named %q, not %s", name, which, adminPortName, p.HTTPGet.Port.String())
	}
}

// podsFor returns the Deployments whose pods a Service selector picks.
func (c *checker) podsFor(selector map[string]string) []*appsv1.Deployment {
	var out []*appsv1.Deployment
	for _, d := range c.m.deployments {
		if subset(selector, d.Spec.Template.Labels) {
			out = append(out, d)
		}
	}
	return out
}

func findPort(d *appsv1.Deployment, target intstr.IntOrString) (corev1.ContainerPort, bool) {
	for _, ctr := range d.Spec.Template.Spec.Containers {
		for _, p := range ctr.Ports {
			if (target.Type == intstr.String && p.Name == target.StrVal) ||
				(target.Type == intstr.Int && p.ContainerPort == target.IntVal) {
				return p, true
			}
		}
	}
	return corev1.ContainerPort{}, false
}

func (c *checker) checkServices() {
	for _, s := range c.m.services {
		name := "Service " + s.Name
		if s.Spec.Type != "" && s.Spec.Type != corev1.ServiceTypeClusterIP {
			c.errorf("%s: type %s; only ClusterIP (the Ingress is the only way in)", name, s.Spec.Type)
		}
		pods := c.podsFor(s.Spec.Selector)
		if len(pods) == 0 {
			c.errorf("%s: selector %v matches no Deployment", name, s.Spec.Selector)
		}
		for _, sp := range s.Spec.Ports {
			target := sp.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(sp.Port)
			}
			for _, d := range pods {
				if _, ok := findPort(d, target); !ok {
					c.errorf("%s: port %s targets %s, which Deployment %s does not expose", name, sp.Name, target.String(), d.Name)
				}
			}
		}
	}
}

func (c *checker) checkIngress() {
	if len(c.m.ingresses) == 0 {
		c.errorf("no Ingress: Krea cannot reach the bridge")
	}
	for _, ing := range c.m.ingresses {
		name := "Ingress " + ing.Name
		if ing.Spec.DefaultBackend != nil {
			c.errorf("%s: defaultBackend exposes everything; route %s only", name, webhookPrefix)
		}
		tlsHosts := map[string]bool{}
		for _, t := range ing.Spec.TLS {
			if t.SecretName == "" {
				c.errorf("%s: TLS entry without secretName", name)
			}
			for _, h := range t.Hosts {
				tlsHosts[h] = true
			}
		}
		if len(ing.Spec.Rules) == 0 {
			c.errorf("%s: no rules", name)
		}
		for _, r := range ing.Spec.Rules {
			if r.Host == "" {
				c.errorf("%s: rule without host", name)
			} else if !tlsHosts[r.Host] {
				c.errorf("%s: host %s is not covered by TLS", name, r.Host)
			}
			if r.HTTP == nil || len(r.HTTP.Paths) == 0 {
				c.errorf("%s: rule %s has no paths", name, r.Host)
				continue
			}
			for _, p := range r.HTTP.Paths {
				if p.Path != webhookPrefix {
					c.errorf("%s: exposes path %q; only %s may be exposed", name, p.Path, webhookPrefix)
				}
				if p.PathType == nil || *p.PathType != networkingv1.PathTypePrefix {
					c.errorf("%s: path %q must have pathType Prefix", name, p.Path)
				}
				c.checkIngressBackend(name, p.Backend)
			}
		}
	}
}

// checkIngressBackend follows the backend to the container port and requires
// the bridge's webhook port.
func (c *checker) checkIngressBackend(name string, b networkingv1.IngressBackend) {
	if b.Service == nil {
		c.errorf("%s: backend must be a Service", name)
		return
	}
	var svc *corev1.Service
	for _, s := range c.m.services {
		if s.Name == b.Service.Name {
			svc = s
		}
	}
	if svc == nil {
		c.errorf("%s: backend Service %s is not in the manifests", name, b.Service.Name)
		return
	}
	var sp *corev1.ServicePort
	for i, p := range svc.Spec.Ports {
		if (b.Service.Port.Name != "" && p.Name == b.Service.Port.Name) ||
			(b.Service.Port.Name == "" && p.Port == b.Service.Port.Number) {
			sp = &svc.Spec.Ports[i]
		}
	}
	if sp == nil {
		c.errorf("%s: backend port of Service %s does not exist", name, svc.Name)
		return
	}
	pods := c.podsFor(svc.Spec.Selector)
	for _, d := range pods {
		if component(d) != "bridge" {
			c.errorf("%s: backend Service %s reaches Deployment %s; only the bridge may be exposed", name, svc.Name, d.Name)
			continue
		}
		if p, ok := findPort(d, sp.TargetPort); !ok || p.ContainerPort != webhookPort || p.Name == adminPortName {
			c.errorf("%s: backend must reach the bridge's webhook port %d, not %s", name, webhookPort, sp.TargetPort.String())
		}
	}
}

func (c *checker) checkAvailability() {
	for _, d := range c.m.deployments {
		if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
			continue
		}
		var pdb *policyv1.PodDisruptionBudget
		for _, p := range c.m.pdbs {
			if selects(p.Spec.Selector, d.Spec.Template.Labels) {
				pdb = p
			}
		}
		if pdb == nil {
			c.errorf("Deployment %s: no PodDisruptionBudget selects its pods", d.Name)
			continue
		}
		if component(d) == "bridge" && (pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.String() != "1") {
			c.errorf("PodDisruptionBudget %s: the bridge needs minAvailable 1", pdb.Name)
		}
	}
	if b := c.deployment("bridge"); b != nil {
		var hpa *autoscalingv2.HorizontalPodAutoscaler
		for _, h := range c.m.hpas {
			r := h.Spec.ScaleTargetRef
			if r.Kind == "Deployment" && r.Name == b.Name && r.APIVersion == "apps/v1" {
				hpa = h
			}
		}
		if hpa == nil {
			c.errorf("Deployment %s: no HorizontalPodAutoscaler scales the bridge", b.Name)
		} else {
			if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas < 2 || hpa.Spec.MaxReplicas < *hpa.Spec.MinReplicas {
				c.errorf("HorizontalPodAutoscaler %s: needs minReplicas >= 2 and maxReplicas >= minReplicas", hpa.Name)
			}
			cpu := false
			for _, m := range hpa.Spec.Metrics {
				if m.Type == autoscalingv2.ResourceMetricSourceType && m.Resource != nil && m.Resource.Name == corev1.ResourceCPU {
					cpu = true
				}
			}
			if !cpu {
				c.errorf("HorizontalPodAutoscaler %s: needs a CPU resource metric", hpa.Name)
			}
		}
	}
	for _, h := range c.m.hpas {
		r := h.Spec.ScaleTargetRef
		found := false
		for _, d := range c.m.deployments {
			if r.Kind == "Deployment" && r.Name == d.Name {
				found = true
			}
		}
		if !found {
			c.errorf("HorizontalPodAutoscaler %s: target %s/%s is not in the manifests", h.Name, r.Kind, r.Name)
		}
	}
}

// portsAllowed is what a NetworkPolicy direction lets through for one pod.
type portsAllowed map[int32]bool

func (p portsAllowed) sorted() []int32 {
	var out []int32
	for k := range p {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func isWorld(peer networkingv1.NetworkPolicyPeer) bool {
	if peer.IPBlock == nil {
		return false
	}
	return peer.IPBlock.CIDR == "0.0.0.0/0" || peer.IPBlock.CIDR == "::/0"
}

func (c *checker) checkNetworkPolicies() {
	allowed := map[string]struct{ in, out []int32 }{
		"bridge":    {in: []int32{webhookPort, adminPort}, out: []int32{natsClientPort, dnsPort}},
		"submitter": {in: []int32{adminPort}, out: []int32{natsClientPort, dnsPort, httpsPort}},
		"mirror":    {in: []int32{adminPort}, out: []int32{natsClientPort, dnsPort, httpsPort}},
	}
	for _, np := range c.m.networkPolicies {
		name := "NetworkPolicy " + np.Name
		for i, r := range np.Spec.Ingress {
			if len(r.From) == 0 {
				c.errorf("%s: ingress rule %d allows every source", name, i)
			}
			if len(r.Ports) == 0 {
				c.errorf("%s: ingress rule %d allows every port", name, i)
			}
			for _, peer := range r.From {
				if isWorld(peer) {
					c.errorf("%s: ingress rule %d allows the whole internet", name, i)
				}
			}
		}
		for i, r := range np.Spec.Egress {
			if len(r.Ports) == 0 {
				c.errorf("%s: egress rule %d allows every port", name, i)
			}
			world := len(r.To) == 0
			for _, peer := range r.To {
				world = world || isWorld(peer)
			}
			if world {
				for _, p := range r.Ports {
					if p.Port == nil || p.Port.IntVal != httpsPort {
						c.errorf("%s: egress rule %d opens the internet on a port other than %d", name, i, httpsPort)
					}
				}
			}
		}
	}
	for _, d := range c.m.deployments {
		comp := component(d)
		in, out := portsAllowed{}, portsAllowed{}
		var hasIn, hasOut bool
		for _, np := range c.m.networkPolicies {
			if !selects(&np.Spec.PodSelector, d.Spec.Template.Labels) {
				continue
			}
			for _, t := range np.Spec.PolicyTypes {
				hasIn = hasIn || t == networkingv1.PolicyTypeIngress
				hasOut = hasOut || t == networkingv1.PolicyTypeEgress
			}
			for _, r := range np.Spec.Ingress {
				for _, p := range r.Ports {
					if p.Port != nil {
						in[p.Port.IntVal] = true
					}
				}
			}
			for _, r := range np.Spec.Egress {
				for _, p := range r.Ports {
					if p.Port != nil {
						out[p.Port.IntVal] = true
					}
				}
			}
		}
		name := "Deployment " + d.Name
		if !hasIn || !hasOut {
			c.errorf("%s: its pods need NetworkPolicies restricting both Ingress and Egress", name)
			continue
		}
		want, ok := allowed[comp]
		if !ok {
			continue
		}
		for _, p := range in.sorted() {
			if !slices.Contains(want.in, p) {
				c.errorf("%s: NetworkPolicy lets port %d in; only %v", name, p, want.in)
			}
		}
		for _, p := range out.sorted() {
			if !slices.Contains(want.out, p) {
				c.errorf("%s: NetworkPolicy lets port %d out; only %v", name, p, want.out)
			}
		}
		for _, p := range []int32{natsClientPort, dnsPort} {
			if !out[p] {
				c.errorf("%s: NetworkPolicy must allow egress to port %d (NATS, DNS)", name, p)
			}
		}
	}
}

func (c *checker) checkNamespaces() {
	var metas []struct {
		kind string
		meta *metav1.ObjectMeta
	}
	add := func(kind string, m *metav1.ObjectMeta) {
		metas = append(metas, struct {
			kind string
			meta *metav1.ObjectMeta
		}{kind, m})
	}
	for _, o := range c.m.deployments {
		add("Deployment", &o.ObjectMeta)
	}
	for _, o := range c.m.services {
		add("Service", &o.ObjectMeta)
	}
	for _, o := range c.m.ingresses {
		add("Ingress", &o.ObjectMeta)
	}
	for _, o := range c.m.networkPolicies {
		add("NetworkPolicy", &o.ObjectMeta)
	}
	for _, o := range c.m.pdbs {
		add("PodDisruptionBudget", &o.ObjectMeta)
	}
	for _, o := range c.m.hpas {
		add("HorizontalPodAutoscaler", &o.ObjectMeta)
	}
	for _, o := range c.m.configMaps {
		add("ConfigMap", &o.ObjectMeta)
	}
	for _, o := range c.m.serviceAccounts {
		add("ServiceAccount", &o.ObjectMeta)
	}
	for _, o := range metas {
		if o.meta.Namespace != c.opts.namespace {
			c.errorf("%s %s: namespace %q, want %q", o.kind, o.meta.Name, o.meta.Namespace, c.opts.namespace)
		}
	}
	if c.opts.namespace == "" && len(c.m.namespaces) > 0 {
		c.errorf("the base must be namespace-less; Namespace objects belong in overlays")
	}
	if c.opts.namespace != "" {
		found := false
		for _, ns := range c.m.namespaces {
			found = found || ns.Name == c.opts.namespace
		}
		if !found {
			c.errorf("Namespace %s is not in the manifests", c.opts.namespace)
		}
	}
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

// yamlFiles lists the YAML files under k8s/, relative to it.
func yamlFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			files = append(files, filepath.ToSlash(path))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	if len(files) == 0 {
		t.Fatal("no YAML files under k8s/")
	}
	return files
}

type jsonPatchOp struct {
	Op    string          `json:"op"`
	Path  string          `json:"path"`
	From  string          `json:"from,omitempty"`
	Value json.RawMessage `json:"value,omitempty"`
}

// TestEveryDocumentDecodesStrictly reads every YAML file under k8s/ (the Helm
// values excepted, see nats_test.go) and decodes each document strictly into
// its type: a typo in a field name, a wrong indentation or an unknown kind
// fails here even where kubectl would silently drop the field.
func TestEveryDocumentDecodesStrictly(t *testing.T) {
	files := yamlFiles(t)

	// Kustomizations first: they say which files are patches and which are
	// resources, and every other file must be one of those.
	role := map[string]string{} // file -> "resource" | "patch" | "kustomization"
	for _, f := range files {
		if filepath.Base(f) != "kustomization.yaml" {
			continue
		}
		role[f] = "kustomization"
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var k kustypes.Kustomization
		if err := decodeStrict(data, &k); err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
			t.Errorf("%s: apiVersion/kind %s/%s", f, k.APIVersion, k.Kind)
		}
		dir := filepath.Dir(f)
		if dir == baseDir && k.Namespace != "" {
			t.Errorf("%s: the base must not set a namespace", f)
		}
		for _, img := range k.Images {
			if img.NewTag == "" && img.Digest == "" || img.NewTag == "latest" {
				t.Errorf("%s: image %s must be pinned (newTag other than latest, or digest)", f, img.Name)
			}
		}
		for _, r := range k.Resources {
			p := filepath.ToSlash(filepath.Join(dir, r))
			if st, err := os.Stat(p); err != nil {
				t.Errorf("%s: resource %s: %v", f, r, err)
			} else if !st.IsDir() {
				role[p] = "resource"
			}
		}
		for _, p := range k.Patches {
			if p.Path == "" {
				continue
			}
			pp := filepath.ToSlash(filepath.Join(dir, p.Path))
			if _, err := os.Stat(pp); err != nil {
				t.Errorf("%s: patch %s: %v", f, p.Path, err)
			}
			role[pp] = "patch"
		}
		if len(k.PatchesStrategicMerge) > 0 || len(k.PatchesJson6902) > 0 || len(k.CommonLabels) > 0 { //nolint:staticcheck // checking that deprecated fields stay unused
			t.Errorf("%s: uses deprecated fields (patchesStrategicMerge, patchesJson6902, commonLabels); use patches and labels", f)
		}
	}

	for _, f := range files {
		if f == helmValuesFile || f == promtoolTestsFile || role[f] == "kustomization" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		example := strings.HasSuffix(f, ".example.yaml")
		if role[f] == "" && !example {
			t.Errorf("%s: not referenced by any kustomization (orphan files are never deployed)", f)
			continue
		}
		docs, err := splitDocs(data)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if len(docs) == 0 {
			t.Errorf("%s: no YAML document", f)
		}
		for i, doc := range docs {
			js, err := yaml.YAMLToJSONStrict(doc)
			if err != nil {
				t.Errorf("%s document %d: %v", f, i, err)
				continue
			}
			if role[f] == "patch" && bytes.HasPrefix(bytes.TrimSpace(js), []byte("[")) {
				var ops []jsonPatchOp
				if err := decodeStrict(doc, &ops); err != nil {
					t.Errorf("%s: JSON 6902 patch: %v", f, err)
				}
				for _, op := range ops {
					if !slices.Contains([]string{"add", "remove", "replace", "move", "copy", "test"}, op.Op) || !strings.HasPrefix(op.Path, "/") {
						t.Errorf("%s: bad JSON 6902 operation %+v", f, op)
					}
				}
				continue
			}
			obj, err := decodeObject(doc)
			if err != nil {
				t.Errorf("%s document %d: %v", f, i, err)
				continue
			}
			if s, ok := obj.(*corev1.Secret); ok {
				if !example {
					t.Errorf("%s: Secret %s outside an *.example.yaml file", f, s.Name)
				}
				checkPlaceholderSecret(t, f, s)
			}
		}
	}
}

// checkPlaceholderSecret makes sure an example Secret holds no real value.
func checkPlaceholderSecret(t *testing.T, file string, s *corev1.Secret) {
	t.Helper()
	if len(s.Data) > 0 {
		t.Errorf("%s: example Secret %s must use stringData placeholders, not data", file, s.Name)
	}
	placeholder := regexp.MustCompile(`^<[a-z0-9-]+>$`)
	for k, v := range s.StringData {
		if !placeholder.MatchString(v) {
			t.Errorf("%s: example Secret %s key %s must be a <placeholder>, not a value", file, s.Name, k)
		}
	}
}

// TestKustomizationsFollowTheRules builds the base and every overlay, as
// `kubectl apply -k` does, and checks the rendered objects.
func TestKustomizationsFollowTheRules(t *testing.T) {
	type kustomization struct {
		dir  string
		opts checkOptions
	}
	cases := []kustomization{
		{baseDir, checkOptions{}},
		{exampleOverlay, checkOptions{namespace: overlayNS}},
	}
	// Every overlay must be listed above.
	overlays, err := filepath.Glob("overlays/*/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range overlays {
		dir := filepath.ToSlash(filepath.Dir(o))
		if !slices.ContainsFunc(cases, func(c kustomization) bool { return c.dir == dir }) {
			t.Errorf("overlay %s is not checked: add it to TestKustomizationsFollowTheRules", dir)
		}
	}
	for _, tc := range cases {
		t.Run(tc.dir, func(t *testing.T) {
			m, err := parseManifests(build(t, tc.dir))
			if err != nil {
				t.Fatalf("rendered %s: %v", tc.dir, err)
			}
			for _, err := range checkManifests(m, tc.opts) {
				t.Error(err)
			}
		})
	}
}

// TestExampleOverlay checks what the example overlay is for: namespace,
// host, TLS and the pinned image.
func TestExampleOverlay(t *testing.T) {
	m, err := parseManifests(build(t, exampleOverlay))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.ingresses) != 1 {
		t.Fatalf("want 1 Ingress, got %d", len(m.ingresses))
	}
	ing := m.ingresses[0]
	host := ing.Spec.Rules[0].Host
	if host == "" || strings.HasSuffix(host, ".invalid") {
		t.Errorf("overlay keeps the placeholder host %q", host)
	}
	if ing.Spec.TLS[0].SecretName == "kreabus-tls" {
		t.Errorf("overlay keeps the base TLS secret name")
	}
	for _, d := range m.deployments {
		for _, ctr := range d.Spec.Template.Spec.Containers {
			if tag, _ := imageTag(ctr.Image); tag == "" || tag == "latest" {
				t.Errorf("Deployment %s: image %s not pinned", d.Name, ctr.Image)
			}
		}
	}
}

// TestSecretExampleCoversReferences: every Secret name and key the
// manifests reference is documented in secret.example.yaml, so an operator
// who follows it gets pods that start.
func TestSecretExampleCoversReferences(t *testing.T) {
	data, err := os.ReadFile(secretExample)
	if err != nil {
		t.Fatal(err)
	}
	docs, err := splitDocs(data)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{} // "secret/key"
	for _, doc := range docs {
		obj, err := decodeObject(doc)
		if err != nil {
			t.Fatal(err)
		}
		s, ok := obj.(*corev1.Secret)
		if !ok {
			t.Fatalf("%s: only Secrets belong here, got %T", secretExample, obj)
		}
		for k := range s.StringData {
			have[s.Name+"/"+k] = true
		}
		have[s.Name] = true
	}
	// Optional keys may be documented as comments only.
	raw := string(data)

	m, err := parseManifests(build(t, baseDir))
	if err != nil {
		t.Fatal(err)
	}
	refs := 0
	for _, d := range m.deployments {
		spec := d.Spec.Template.Spec
		for _, ctr := range spec.Containers {
			for _, e := range ctr.Env {
				if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
					continue
				}
				refs++
				r := e.ValueFrom.SecretKeyRef
				optional := r.Optional != nil && *r.Optional
				if !have[r.Name+"/"+r.Key] && !(optional && have[r.Name] && strings.Contains(raw, r.Key)) {
					t.Errorf("Deployment %s: secret %s key %s is not in %s", d.Name, r.Name, r.Key, secretExample)
				}
			}
		}
		for _, v := range spec.Volumes {
			if v.Secret == nil {
				continue
			}
			refs++
			if !have[v.Secret.SecretName] {
				t.Errorf("Deployment %s: secret volume %s is not in %s", d.Name, v.Secret.SecretName, secretExample)
			}
			// The file the env var points at must be a key of that Secret.
			for _, ctr := range spec.Containers {
				for _, vm := range ctr.VolumeMounts {
					if vm.Name != v.Name {
						continue
					}
					for _, e := range ctr.Env {
						if fileSettings[e.Name] && strings.HasPrefix(e.Value, vm.MountPath+"/") {
							key := strings.TrimPrefix(e.Value, vm.MountPath+"/")
							if !have[v.Secret.SecretName+"/"+key] {
								t.Errorf("Deployment %s: %s=%s but secret %s has no key %s in %s", d.Name, e.Name, e.Value, v.Secret.SecretName, key, secretExample)
							}
						}
					}
				}
			}
		}
	}
	if refs == 0 {
		t.Fatal("no secret references found: the check checked nothing")
	}
}

// TestDecodeRejectsBadDocuments: the strict decoder is what catches typos, so
// make sure it does.
func TestDecodeRejectsBadDocuments(t *testing.T) {
	cases := []struct {
		name, doc, want string
	}{
		{"unknown field", `
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  template:
    spec:
      containers:
        - name: x
          image: x:1
          readinessprobe: {}
`, "unknown field"},
		{"field with the wrong case", `
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  template:
    spec:
      containers:
        - name: x
          image: x:1
          securitycontext: {}
`, "unknown field"},
		{"misplaced field", `
apiVersion: v1
kind: Service
metadata: {name: x}
ports: [{port: 80}]
`, "unknown field"},
		{"unknown kind", `
apiVersion: v1
kind: Pod
metadata: {name: x}
`, "unknown kind"},
		{"removed API version", `
apiVersion: extensions/v1beta1
kind: Ingress
metadata: {name: x}
`, "unknown kind"},
		{"duplicate key", `
apiVersion: v1
kind: ConfigMap
metadata: {name: x}
data:
  A: "1"
  A: "2"
`, "already set"},
		{"wrong type", `
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: x}
spec:
  selector: "app=x"
`, "cannot unmarshal"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseManifests([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestCheckerCatchesViolations breaks the rendered base one rule at a time
// and expects the checker to say so: a rule that silently stops firing
// fails here.
func TestCheckerCatchesViolations(t *testing.T) {
	good := build(t, baseDir)

	// Sanity: the unbroken base passes, so every case below fails because
	// of its own mutation.
	m, err := parseManifests(good)
	if err != nil {
		t.Fatal(err)
	}
	if errs := checkManifests(m, checkOptions{}); len(errs) > 0 {
		t.Fatalf("base does not pass: %v", errs)
	}

	bridge := func(m *manifests) *appsv1.Deployment {
		for _, d := range m.deployments {
			if component(d) == "bridge" {
				return d
			}
		}
		t.Fatal("no bridge")
		return nil
	}
	submitter := func(m *manifests) *appsv1.Deployment {
		for _, d := range m.deployments {
			if component(d) == "submitter" {
				return d
			}
		}
		t.Fatal("no submitter")
		return nil
	}
	ctr := func(d *appsv1.Deployment) *corev1.Container { return &d.Spec.Template.Spec.Containers[0] }
	ptr := func(b bool) *bool { return &b }
	env := func(c *corev1.Container, name string) *corev1.EnvVar {
		for i := range c.Env {
			if c.Env[i].Name == name {
				return &c.Env[i]
			}
		}
		t.Fatalf("no env %s", name)
		return nil
	}

	cases := []struct {
		name   string
		mutate func(m *manifests)
		opts   checkOptions
		want   string
	}{
		{"no liveness probe", func(m *manifests) { ctr(bridge(m)).LivenessProbe = nil }, checkOptions{}, "livenessProbe missing"},
		{"no readiness probe", func(m *manifests) { ctr(submitter(m)).ReadinessProbe = nil }, checkOptions{}, "readinessProbe missing"},
		{"readiness on the webhook port", func(m *manifests) {
			ctr(bridge(m)).ReadinessProbe.HTTPGet.Port = intstr.FromString("http")
		}, checkOptions{}, "must use the port named"},
		{"readiness on /healthz", func(m *manifests) {
			ctr(bridge(m)).ReadinessProbe.HTTPGet.Path = "/healthz"
		}, checkOptions{}, `readinessProbe path "/healthz"`},
		{"image :latest", func(m *manifests) { ctr(bridge(m)).Image = "ghcr.io/kreabus/kreabus:latest" }, checkOptions{}, ":latest"},
		{"image without tag", func(m *manifests) { ctr(submitter(m)).Image = "ghcr.io/kreabus/kreabus" }, checkOptions{}, "has no tag"},
		{"registry port is no tag", func(m *manifests) { ctr(submitter(m)).Image = "registry:5000/kreabus" }, checkOptions{}, "has no tag"},
		{"no memory limit", func(m *manifests) { delete(ctr(bridge(m)).Resources.Limits, corev1.ResourceMemory) }, checkOptions{}, "resources.limits.memory missing"},
		{"no cpu request", func(m *manifests) { delete(ctr(submitter(m)).Resources.Requests, corev1.ResourceCPU) }, checkOptions{}, "resources.requests.cpu missing"},
		{"request above limit", func(m *manifests) {
			ctr(bridge(m)).Resources.Requests[corev1.ResourceMemory] = resource.MustParse("1Gi")
		}, checkOptions{}, "above the limit"},
		{"runAsNonRoot false", func(m *manifests) { ctr(bridge(m)).SecurityContext.RunAsNonRoot = ptr(false) }, checkOptions{}, "runAsNonRoot must be true"},
		{"writable root fs", func(m *manifests) { ctr(bridge(m)).SecurityContext.ReadOnlyRootFilesystem = nil }, checkOptions{}, "readOnlyRootFilesystem"},
		{"privilege escalation", func(m *manifests) { ctr(submitter(m)).SecurityContext.AllowPrivilegeEscalation = ptr(true) }, checkOptions{}, "allowPrivilegeEscalation"},
		{"capabilities kept", func(m *manifests) { ctr(bridge(m)).SecurityContext.Capabilities.Drop = nil }, checkOptions{}, "drop must contain ALL"},
		{"capability added", func(m *manifests) {
			ctr(bridge(m)).SecurityContext.Capabilities.Add = []corev1.Capability{"NET_BIND_SERVICE"}
		}, checkOptions{}, "add must be empty"},
		{"no container securityContext", func(m *manifests) { ctr(bridge(m)).SecurityContext = nil }, checkOptions{}, "container securityContext missing"},
		{"pod as root", func(m *manifests) { var root int64; bridge(m).Spec.Template.Spec.SecurityContext.RunAsUser = &root }, checkOptions{}, "runAsUser must be"},
		{"no seccomp", func(m *manifests) { submitter(m).Spec.Template.Spec.SecurityContext.SeccompProfile = nil }, checkOptions{}, "seccompProfile must be RuntimeDefault"},
		{"token mounted", func(m *manifests) { bridge(m).Spec.Template.Spec.AutomountServiceAccountToken = ptr(true) }, checkOptions{}, "automountServiceAccountToken must be false"},
		{"default service account", func(m *manifests) { bridge(m).Spec.Template.Spec.ServiceAccountName = "" }, checkOptions{}, "dedicated serviceAccountName"},
		{"API token in plain env", func(m *manifests) {
			e := env(ctr(submitter(m)), "KREA_API_TOKEN")
			e.ValueFrom, e.Value = nil, "krea-live-token"
		}, checkOptions{}, "KREA_API_TOKEN must come from a secretKeyRef"},
		{"webhook secret from a ConfigMap", func(m *manifests) {
			e := env(ctr(bridge(m)), "KREABUS_WEBHOOK_SECRET")
			e.ValueFrom = &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{Key: "KREABUS_WEBHOOK_SECRET"}}
		}, checkOptions{}, "KREABUS_WEBHOOK_SECRET must come from a secretKeyRef"},
		{"secret in the ConfigMap", func(m *manifests) { m.configMaps[0].Data["KREA_API_TOKEN"] = "x" }, checkOptions{}, "looks like a secret"},
		{"nkey seed as a value", func(m *manifests) {
			m.configMaps[0].Data["NATS_SEED"] = "SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU"
		}, checkOptions{}, "looks like key material"},
		{"credentials file outside the secret volume", func(m *manifests) {
			env(ctr(bridge(m)), "NATS_NKEY").Value = "/tmp/user.nk"
		}, checkOptions{}, "not inside a mounted secret volume"},
		{"committed Secret", func(m *manifests) {
			m.secrets = append(m.secrets, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "kreabus"}})
		}, checkOptions{}, "never committed"},
		{"ingress exposes /", func(m *manifests) { m.ingresses[0].Spec.Rules[0].HTTP.Paths[0].Path = "/" }, checkOptions{}, `exposes path "/"`},
		{"ingress exposes metrics too", func(m *manifests) {
			p := m.ingresses[0].Spec.Rules[0].HTTP.Paths[0]
			p.Path = "/metrics"
			m.ingresses[0].Spec.Rules[0].HTTP.Paths = append(m.ingresses[0].Spec.Rules[0].HTTP.Paths, p)
		}, checkOptions{}, `exposes path "/metrics"`},
		{"ingress exact path type", func(m *manifests) {
			pt := networkingv1.PathTypeImplementationSpecific
			m.ingresses[0].Spec.Rules[0].HTTP.Paths[0].PathType = &pt
		}, checkOptions{}, "must have pathType Prefix"},
		{"ingress without TLS", func(m *manifests) { m.ingresses[0].Spec.TLS = nil }, checkOptions{}, "not covered by TLS"},
		{"ingress default backend", func(m *manifests) {
			m.ingresses[0].Spec.DefaultBackend = &networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "kreabus-bridge"}}
		}, checkOptions{}, "defaultBackend"},
		{"ingress to the metrics service", func(m *manifests) {
			m.ingresses[0].Spec.Rules[0].HTTP.Paths[0].Backend.Service = &networkingv1.IngressServiceBackend{
				Name: "kreabus-metrics", Port: networkingv1.ServiceBackendPort{Name: "admin"}}
		}, checkOptions{}, "only the bridge may be exposed"},
		{"public URL on another host", func(m *manifests) {
			m.configMaps[0].Data["KREABUS_PUBLIC_URL"] = "https://elsewhere.example.com"
		}, checkOptions{}, "is not an Ingress host"},
		{"public URL over http", func(m *manifests) {
			m.configMaps[0].Data["KREABUS_PUBLIC_URL"] = "http://kreabus.example.invalid"
		}, checkOptions{}, "must be https"},
		{"no PDB for the bridge", func(m *manifests) {
			m.pdbs = slices.DeleteFunc(m.pdbs, func(p *policyv1.PodDisruptionBudget) bool {
				return selects(p.Spec.Selector, bridge(m).Spec.Template.Labels)
			})
		}, checkOptions{}, "no PodDisruptionBudget"},
		{"bridge PDB minAvailable 0", func(m *manifests) {
			for _, p := range m.pdbs {
				if selects(p.Spec.Selector, bridge(m).Spec.Template.Labels) {
					zero := intstr.FromInt32(0)
					p.Spec.MinAvailable = &zero
				}
			}
		}, checkOptions{}, "minAvailable 1"},
		{"no HPA", func(m *manifests) { m.hpas = nil }, checkOptions{}, "no HorizontalPodAutoscaler"},
		{"HPA without CPU", func(m *manifests) {
			m.hpas[0].Spec.Metrics[0].Resource.Name = corev1.ResourceMemory
		}, checkOptions{}, "needs a CPU resource metric"},
		{"single bridge", func(m *manifests) { one := int32(1); bridge(m).Spec.Replicas = &one }, checkOptions{}, "at least 2 replicas"},
		{"rolling update may drop pods", func(m *manifests) {
			one := intstr.FromInt32(1)
			bridge(m).Spec.Strategy.RollingUpdate.MaxUnavailable = &one
		}, checkOptions{}, "maxUnavailable 0"},
		{"no spreading", func(m *manifests) {
			s := &bridge(m).Spec.Template.Spec
			s.TopologySpreadConstraints, s.Affinity = nil, nil
		}, checkOptions{}, "topologySpreadConstraints or podAntiAffinity"},
		{"no network policy", func(m *manifests) { m.networkPolicies = nil }, checkOptions{}, "need NetworkPolicies"},
		{"bridge egress to the internet", func(m *manifests) {
			for _, np := range m.networkPolicies {
				if selects(&np.Spec.PodSelector, bridge(m).Spec.Template.Labels) {
					p := intstr.FromInt32(443)
					np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{
						Ports: []networkingv1.NetworkPolicyPort{{Port: &p}},
						To:    []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0"}}},
					})
				}
			}
		}, checkOptions{}, "lets port 443 out"},
		{"ingress from anywhere", func(m *manifests) { m.networkPolicies[0].Spec.Ingress[0].From = nil }, checkOptions{}, "allows every source"},
		{"egress all ports", func(m *manifests) { m.networkPolicies[1].Spec.Egress[0].Ports = nil }, checkOptions{}, "allows every port"},
		{"service to a missing port", func(m *manifests) {
			m.services[0].Spec.Ports[0].TargetPort = intstr.FromString("grpc")
		}, checkOptions{}, "does not expose"},
		{"namespace in the base", func(m *manifests) { m.configMaps[0].Namespace = "default" }, checkOptions{}, `namespace "default", want ""`},
		{"overlay without namespace", func(m *manifests) {}, checkOptions{namespace: overlayNS}, `want "kreabus"`},
		{"unknown config map", func(m *manifests) {
			ctr(bridge(m)).EnvFrom[0].ConfigMapRef.Name = "nope"
		}, checkOptions{}, "ConfigMap nope is not in the manifests"},
		{"envFrom a whole Secret", func(m *manifests) {
			c := ctr(bridge(m))
			c.EnvFrom = append(c.EnvFrom, corev1.EnvFromSource{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "kreabus"}}})
		}, checkOptions{}, "envFrom secretRef"},
		{"hostPath volume", func(m *manifests) {
			s := &submitter(m).Spec.Template.Spec
			s.Volumes = append(s.Volumes, corev1.Volume{Name: "h", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}})
		}, checkOptions{}, "hostPath"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := parseManifests(good)
			if err != nil {
				t.Fatal(err)
			}
			tc.mutate(m)
			errs := checkManifests(m, tc.opts)
			for _, err := range errs {
				if strings.Contains(err.Error(), tc.want) {
					return
				}
			}
			t.Fatalf("want an error containing %q, got %v", tc.want, errs)
		})
	}
}
