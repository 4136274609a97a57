// Command checker evaluates ContinuedPretrain fixtures with the libraries GitOps tools use, so the tests
// check our health rules on the real interpreters rather than on a re-implementation:
//
//	checker lua SCRIPT FILE...            Argo CD's VM setup on gopher-lua: prints {"status","message"} per file
//	checker kstatus FILE...               sigs.k8s.io/cli-utils kstatus (Flux's default): {"status","message"}
//	checker cel INPROGRESS FAILED CURRENT FILE...
//	                                      Flux's healthCheckExprs rule on cel-go: {"status"}
//
// Output: one JSON line per file, {"file", "status", "message", "error"}.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/ext"
	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type result struct {
	File    string `json:"file"`
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Error   string `json:"error,omitempty"`
}

func load(path string) (*unstructured.Unstructured, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	text, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, err
	}
	obj := &unstructured.Unstructured{}
	return obj, obj.UnmarshalJSON(text) // integers stay int64, as the API server's objects are
}

// toLua converts an object as Argo CD's decodeValue does.
func toLua(l *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []interface{}:
		table := l.CreateTable(len(v), 0)
		for _, item := range v {
			table.Append(toLua(l, item))
		}
		return table
	case map[string]interface{}:
		table := l.CreateTable(0, len(v))
		for key, item := range v {
			table.RawSetH(lua.LString(key), toLua(l, item))
		}
		return table
	}
	return lua.LNil
}

// luaHealth runs a health script the way Argo CD runs a resource override's health.lua: standard libraries
// skipped (no string, math, io), then only package, base and table opened; one second to finish; `obj` global.
func luaHealth(script string, obj *unstructured.Unstructured) (string, string, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return "", "", err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj.Object))
	if err := l.DoString(script); err != nil {
		return "", "", err
	}
	table, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("expect table output from Lua script, not %s", l.Get(-1).Type())
	}
	statusValue, messageValue := table.RawGetString("status"), table.RawGetString("message")
	switch statusValue.String() {
	case "Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown":
	default:
		return "Unknown", "Lua returned an invalid health status", nil
	}
	message := ""
	if messageValue != lua.LNil {
		message = messageValue.String()
	}
	return statusValue.String(), message, nil
}

// celStatus applies Flux's healthCheckExprs rule (RFC 0009, fluxcd/pkg runtime/cel) on cel-go: InProgress
// when status.observedGeneration differs from metadata.generation; else the first of inProgress, failed,
// current that holds; else InProgress. Like Flux, expressions are parsed (not compiled against declared
// variables) and evaluated with the object's top-level fields as the activation.
func celStatus(exprs [3]string, obj *unstructured.Unstructured) (string, error) {
	content := obj.UnstructuredContent()
	if observed, found, _ := unstructured.NestedInt64(content, "status", "observedGeneration"); found {
		if generation, ok, _ := unstructured.NestedInt64(content, "metadata", "generation"); ok && observed != generation {
			return "InProgress", nil
		}
	}
	env, err := cel.NewEnv(
		cel.HomogeneousAggregateLiterals(),
		cel.EagerlyValidateDeclarations(true),
		cel.DefaultUTCTimeZone(true),
		cel.CrossTypeNumericComparisons(true),
		cel.OptionalTypes(),
		ext.Strings(),
		ext.Sets(),
		ext.Encoders(),
	)
	if err != nil {
		return "", err
	}
	for i, verdict := range []string{"InProgress", "Failed", "Current"} {
		if exprs[i] == "" {
			continue
		}
		ast, issues := env.Parse(exprs[i])
		if issues != nil && issues.Err() != nil {
			return "", issues.Err()
		}
		program, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize), cel.InterruptCheckFrequency(100))
		if err != nil {
			return "", err
		}
		out, _, err := program.Eval(content)
		if err != nil {
			return "", fmt.Errorf("%s: %w", verdict, err)
		}
		if out == types.True {
			return verdict, nil
		}
	}
	return "InProgress", nil
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: checker lua|kstatus|cel ...")
		os.Exit(2)
	}
	mode, args := os.Args[1], os.Args[2:]
	var script string
	var exprs [3]string
	switch mode {
	case "lua":
		data, err := os.ReadFile(args[0])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		script, args = string(data), args[1:]
	case "cel":
		if len(args) < 4 {
			fmt.Fprintln(os.Stderr, "usage: checker cel INPROGRESS FAILED CURRENT FILE...")
			os.Exit(2)
		}
		copy(exprs[:], args[:3])
		args = args[3:]
	case "kstatus":
	default:
		fmt.Fprintf(os.Stderr, "unknown mode %q\n", mode)
		os.Exit(2)
	}
	encoder := json.NewEncoder(os.Stdout)
	for _, file := range args {
		out := result{File: file}
		obj, err := load(file)
		if err == nil {
			switch mode {
			case "lua":
				out.Status, out.Message, err = luaHealth(script, obj)
			case "kstatus":
				var computed *status.Result
				if computed, err = status.Compute(obj); err == nil {
					out.Status, out.Message = computed.Status.String(), computed.Message
				}
			case "cel":
				out.Status, err = celStatus(exprs, obj)
			}
		}
		if err != nil {
			out.Error = err.Error()
		}
		_ = encoder.Encode(out)
	}
}
